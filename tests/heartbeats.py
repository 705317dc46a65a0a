"""Whether other Python threads get the interpreter while belated works: a heartbeat thread appends
to the same list as the work, and the beats between two of the work's events are counted."""

import sys
import threading
import time


def heartbeats_between(action, first="start", last="end"):
    """How many times a heartbeat thread ran between the first ``first`` and the last ``last`` event
    that ``action(events)`` records: another Python thread must get the interpreter while belated
    works through a huge argument or graph, as it would from Python code. Holding it throughout, the
    heartbeat still slips in at the few bytecode boundaries around the work (at most 4 times,
    measured); offering it, dozens of times."""
    events = []
    stop = threading.Event()

    def heartbeat():
        while not stop.is_set():
            events.append("beat")
            time.sleep(0.0005)

    interval = sys.getswitchinterval()
    # A short switch interval makes the heartbeat ask often, so a few beats fit in a short stretch.
    sys.setswitchinterval(0.0005)
    beating = threading.Thread(target=heartbeat)
    beating.start()
    try:
        action(events)
    finally:
        stop.set()
        beating.join(timeout=10)
        sys.setswitchinterval(interval)
    end = len(events) - events[::-1].index(last)
    return events[events.index(first) : end].count("beat")
