"""The tests' tracker: the library's loopback opentracker (pipeline.localtracker), under the tests' names.

    with Tracker([infohash]) as tracker:          # temp dir with whitelist.txt, a free port (TCP = UDP)
        spec = BuildSpec(..., trackers=(tracker.announce_url,), ...)
        tracker.write_whitelist([infohash, other])
        tracker.reload()                          # SIGHUP by PID, then waits until every listed hash is accepted
        tracker.announce(other)                   # the bdecoded answer to one HTTP announce

A missing opentracker fails a test (TrackerError naming ./bootstrap.sh), it never skips it.
"""

from __future__ import annotations

from pipeline.localtracker import LocalTracker as Tracker
from pipeline.localtracker import TrackerError, announce, compact_peers, free_port, opentracker_binary

__all__ = ["Tracker", "TrackerError", "announce", "compact_peers", "free_port", "opentracker_binary"]
