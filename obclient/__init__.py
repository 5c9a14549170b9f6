"""obclient: the library strategy processes link to read observer's books.

Imports only `proto`, numpy and msgpack: never `observer`, never greenlet.
"""
