"""observer.book: the exact L2 book engine and its top-N export (see book.py)."""

from observer.book.book import ASK, BID, Book, BookCrossed, BookError, BookUpdate

__all__ = ["ASK", "BID", "Book", "BookCrossed", "BookError", "BookUpdate"]
