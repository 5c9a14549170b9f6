"""Connection churn against a real observer: what a closed connection leaves behind is nothing.

50,000 connect/close cycles from a client process (every other one says hello and takes the
welcome with its fds, the rest close at once) used to take the supervisor from 38 MB to over
400 MB: each dead connection kept its receive buffer and msgpack packer until the cyclic
collector ran, and the heap never gave the peak back. Nothing here calls the collector.
"""

import subprocess
import sys

from kit.procs import ObserverProcess, wait_until
from obproto import messages as m

CYCLES = 50_000
WARMUP_CYCLES = 2_000
RSS_GROWTH_MAX = 1.2            # end RSS over RSS after the warm-up
CHURN_WAIT_S = 600.0

CHURN = r"""
import array, socket, sys
from obclient.protocol import ClientProtocol

path, cycles, BUSY = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
welcomes = refusals = 0
for i in range(cycles):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    if i % 2 == 0:
        proto = ClientProtocol("churn")
        req_id, data = proto.hello(want_fds=True)
        try:
            sock.sendall(data)
            while proto.take_reply(req_id) is None and not proto.unsolicited_errors:
                data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4))
                for level, kind, cdata in anc:
                    for fd in array.array("i", cdata[: len(cdata) - len(cdata) % 4]):
                        socket.close(fd)
                if not data:
                    break
                proto.receive_data(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if proto.unsolicited_errors:    # BUSY: our last closes not seen yet (per-pid limit)
            assert proto.unsolicited_errors[-1].code == BUSY, proto.unsolicited_errors[-1]
            refusals += 1
        else:
            welcomes += 1
    sock.close()
print(welcomes, refusals, flush=True)
"""


def vm_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def churn(path: str, cycles: int) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", CHURN, path, str(cycles), str(m.ErrorCode.BUSY)],
                          capture_output=True, text=True, timeout=CHURN_WAIT_S)
    assert done.returncode == 0, done.stderr
    welcomes, refusals = map(int, done.stdout.split())
    return welcomes, refusals


def test_rss_stays_flat_over_50k_connect_close_cycles():
    with ObserverProcess(rate=50) as obs:
        client = obs.wait_ready()
        pid = obs.proc.pid
        churn(obs.socket_path, WARMUP_CYCLES)
        rss_warm = vm_rss_bytes(pid)
        welcomes, refusals = churn(obs.socket_path, CYCLES - WARMUP_CYCLES)
        wait_until(lambda: client.stats().observer["clients"] == 1, CHURN_WAIT_S,
                   "every churned connection to be gone")
        rss_end = vm_rss_bytes(pid)
        client.close()
    print(f"churn: RSS {rss_warm / 1e6:.1f} -> {rss_end / 1e6:.1f} MB over {CYCLES} cycles, "
          f"{welcomes} welcomes, {refusals} BUSY")
    assert welcomes + refusals == (CYCLES - WARMUP_CYCLES) // 2
    assert welcomes > refusals
    assert rss_end <= RSS_GROWTH_MAX * rss_warm, (
        f"RSS {rss_warm / 1e6:.1f} MB after the warm-up, {rss_end / 1e6:.1f} MB after "
        f"{CYCLES} cycles")
