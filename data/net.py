"""Fail-fast network checks for the data scripts: one bounded probe instead of a client's retry loop."""
import threading


def describe(error, limit=300):
    """One line: the exception type and its message, whitespace collapsed."""
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def unreachable_reason(head, timeout):
    """None if `head()` (an HTTP HEAD of the caller's client, any status) returns within ~`timeout`
    seconds, else a one-line reason. Runs in a daemon thread so even a hanging DNS lookup cannot
    stall the caller past the deadline."""
    outcome = {}

    def probe():
        try:
            head()
            outcome["ok"] = True
        except Exception as e:  # DNS, refused, TLS, proxy, timeout: all mean "unreachable"
            outcome["error"] = describe(e)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return None if "ok" in outcome else outcome.get("error", f"no answer within {timeout:g} s")
