#!/usr/bin/env python3
"""Userspace delay line for bench/throughput.sh (this kernel has no sch_netem).

Opens the TUN device named argv[1] and writes every IP packet it reads back into it argv[2]
milliseconds later, in order (a constant delay, like `netem delay`), dropping each packet with
probability argv[3] percent (like `netem loss`). Policy routing in the middle namespace sends
packets from both veths into the TUN and routes what comes back out to its destination, so each
direction passes once. The TUN has no offloads, so the kernel hands it single datagrams and TCP
segments (GSO/TSO batches are split before), and loss applies per packet. Prints the counts on
SIGTERM. Runs until killed.
"""
import collections
import fcntl
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def main():
    name, delay = sys.argv[1], float(sys.argv[2]) / 1000.0
    loss = float(sys.argv[3]) / 100.0 if len(sys.argv) > 3 else 0.0
    counts = {"packets": 0, "dropped": 0}

    def report(*_):
        print("delay line: %(packets)d packets, %(dropped)d dropped" % counts, flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    print("ready", flush=True)
    queue = collections.deque()
    read, write, now = os.read, os.write, time.monotonic
    while True:
        t = now()
        while queue and queue[0][0] <= t:
            try:
                write(fd, queue.popleft()[1])
            except OSError:
                pass
        timeout = max(0.0, queue[0][0] - t) if queue else 1.0
        r, _, _ = select.select([fd], [], [], timeout)
        if r:
            t = now() + delay
            for _ in range(256):
                try:
                    pkt = read(fd, 65536)
                except BlockingIOError:
                    break
                counts["packets"] += 1
                if loss and random.random() < loss:
                    counts["dropped"] += 1
                    continue
                queue.append((t, pkt))


if __name__ == "__main__":
    main()
