#!/usr/bin/env python3
"""An independent, deliberately naive cron evaluator (Python's zoneinfo on the
system tzdata), used to generate tests/cron_cases.inc: the expected next and
previous occurrences that the C++ engine is checked against.

It scans time step by step and shares no code with src/cron.cpp. It follows
the rules docs/scheduling.md documents: an expression whose hour field is '*' is
evaluated by elapsed time (every instant whose wall clock matches); any other
by wall-clock time, a time in a spring-forward gap running at the first
instant after the gap and a time in a fall-back overlap at its first
occurrence.

    python3 tests/tools/cron_oracle.py > tests/cron_cases.inc
"""
import calendar
import datetime as dt
import sys
import zoneinfo

UTC = dt.timezone.utc
MONTHS = "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split()
DAYS = "SUN MON TUE WED THU FRI SAT".split()
MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
          "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


def value(tok, names, lo):
    t = tok.upper()
    if names and t in names:
        return names.index(t) + lo
    return int(tok)


def plain(elem, lo, hi, names=None):
    rng, step = (elem.split("/") + ["1"])[:2]
    step = int(step)
    if rng in ("*", "?"):
        a, b = lo, hi
    elif "-" in rng[1:]:
        x, y = rng.split("-")
        a, b = value(x, names, lo), value(y, names, lo)
    else:
        a = value(rng, names, lo)
        b = hi if "/" in elem else a
    return set(range(a, b + 1, step))


class Expr:
    def __init__(self, text):
        body = MACROS.get(text.strip(), text)
        f = body.split()
        if len(f) == 5:
            f = ["0"] + f
        self.res = 1 if len(body.split()) == 6 else 60
        sec, mi, hr, dom, mon, dow = f
        self.sec = set().union(*(plain(e, 0, 59) for e in sec.split(",")))
        self.min = set().union(*(plain(e, 0, 59) for e in mi.split(",")))
        self.hour = set().union(*(plain(e, 0, 23) for e in hr.split(",")))
        self.every_hour = self.hour == set(range(24))
        self.mon = set().union(*(plain(e, 1, 12, MONTHS) for e in mon.split(",")))
        self.days, self.L, self.LW, self.W = set(), set(), False, set()
        for e in dom.split(","):
            if e == "L":
                self.L.add(0)
            elif e.startswith("L-"):
                self.L.add(int(e[2:]))
            elif e == "LW":
                self.LW = True
            elif e.endswith("W"):
                self.W.add(int(e[:-1]))
            else:
                self.days |= plain(e, 1, 31)
        self.wdays, self.lastw, self.nth = set(), set(), set()
        for e in dow.split(","):
            if "#" in e:
                w, k = e.split("#")
                self.nth.add((int(k), value(w, DAYS, 0) % 7))
            elif len(e) > 1 and e.endswith("L"):
                self.lastw.add(value(e[:-1], DAYS, 0) % 7)
            else:
                head = e.split("/")[0]
                # "*" and "a/step" run to Saturday; only an explicit range may name 7.
                to_saturday = head in ("*", "?") or ("/" in e and "-" not in head)
                self.wdays |= {w % 7 for w in plain(e, 0, 6 if to_saturday else 7, DAYS)}
        self.dom_restricted = not (dom.startswith("*") or dom == "?")
        self.dow_restricted = not (dow.startswith("*") or dow == "?")

    def day_ok(self, d):
        if d.month not in self.mon:
            return False
        last = calendar.monthrange(d.year, d.month)[1]
        w = (d.weekday() + 1) % 7
        dom = d.day in self.days or (last - d.day) in self.L
        if self.LW:
            lw = last
            lwd = (dt.date(d.year, d.month, last).weekday() + 1) % 7
            lw -= 1 if lwd == 6 else 2 if lwd == 0 else 0
            dom = dom or d.day == lw
        for n in self.W:
            if n > last:
                continue
            nw = (dt.date(d.year, d.month, n).weekday() + 1) % 7
            t = n
            if nw == 6:
                t = 3 if n == 1 else n - 1
            elif nw == 0:
                t = n - 2 if n == last else n + 1
            dom = dom or d.day == t
        dow = w in self.wdays or (w in self.lastw and d.day + 7 > last) or (((d.day - 1) // 7 + 1, w) in self.nth)
        return (dom or dow) if (self.dom_restricted and self.dow_restricted) else (dom and dow)

    def ok(self, naive):
        return (self.day_ok(naive.date()) and naive.hour in self.hour and naive.minute in self.min
                and naive.second in self.sec)


def local(t, zone):
    return t.astimezone(zone).replace(tzinfo=None)


def instant(L, zone):
    a = L.replace(tzinfo=zone, fold=0).astimezone(UTC)
    b = L.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if local(a, zone) != L:  # in a gap: the first instant after it
        lo, hi = a - dt.timedelta(hours=26), a
        while (hi - lo) > dt.timedelta(seconds=1):
            mid = lo + (hi - lo) / 2
            if local(mid, zone) > L:
                hi = mid
            else:
                lo = mid
        return hi.replace(microsecond=0)
    return min(a, b)


def day_start(L):
    return dt.datetime(L.year, L.month, L.day)


def next_occ(e, after, zone):
    step = dt.timedelta(seconds=e.res)
    if e.every_hour:
        t = after + dt.timedelta(seconds=1)
        t = t + dt.timedelta(seconds=(-t.timestamp()) % e.res)
        for _ in range(5_000_000):
            L = local(t, zone)
            if not e.day_ok(L.date()):
                left = (day_start(L) + dt.timedelta(days=1) - L) - dt.timedelta(hours=3)
                t += max(step, left - dt.timedelta(seconds=left.total_seconds() % e.res))
                continue
            if e.ok(L):
                return t
            t += step
        raise RuntimeError("no next")
    L = local(after, zone) - dt.timedelta(hours=3)
    L = L + dt.timedelta(seconds=(-L.second) % e.res)
    for _ in range(5_000_000):
        if not e.day_ok(L.date()):
            L = day_start(L) + dt.timedelta(days=1)
            continue
        if e.ok(L):
            s = instant(L, zone)
            if s > after:
                return s
        L += step
    raise RuntimeError("no next")


def prev_occ(e, before, zone):
    step = dt.timedelta(seconds=e.res)
    if e.every_hour:
        t = before - dt.timedelta(seconds=1)
        t = t - dt.timedelta(seconds=t.timestamp() % e.res)
        for _ in range(5_000_000):
            L = local(t, zone)
            if not e.day_ok(L.date()):
                back = (L - day_start(L)) - dt.timedelta(hours=3)
                t -= max(step, back - dt.timedelta(seconds=back.total_seconds() % e.res))
                continue
            if e.ok(L):
                return t
            t -= step
        raise RuntimeError("no previous")
    L = local(before, zone) + dt.timedelta(hours=3)
    L = L - dt.timedelta(seconds=L.second % e.res)
    for _ in range(5_000_000):
        if not e.day_ok(L.date()):
            L = day_start(L) - step
            continue
        if e.ok(L):
            s = instant(L, zone)
            if s < before:
                return s
        L -= step
    raise RuntimeError("no previous")


EXPRESSIONS = [
    "* * * * *", "*/15 * * * *", "0 * * * *", "30 2 * * *", "0 0 * * *", "5 4 * * SUN", "0 9 * * MON-FRI",
    "0 12 1 * *", "0 0 1 1 *", "15 10 L * *", "0 8 L-2 * *", "0 7 15W * *", "0 6 1W * *", "0 6 31W * *",
    "0 18 LW * *", "0 9 * * 5L", "0 9 * * 6#3", "0 9 * * MON#1", "0 0 29 2 *", "0 0 13 * FRI",
    "0 0 */2 * MON", "0 22 * JAN,JUL *", "*/20 9-17 * * 1-5", "0 0,12 1,15 * *", "45 1 * * *",
    "30 1 * * *", "0 2 * * *", "59 23 31 12 *", "0 0 * * 7", "@weekly", "@monthly", "@hourly",
    "*/10 * * * * *", "30 */5 * * * *", "0 30 2 * * *", "15 45 1 * * *", "0 0 12 ? * WED", "0 */30 * * *",
    "10-50/20 * * * *", "0 3 * 3,10 SUN", "*/15 0-23 * * *", "0 0 L,L-3 * *", "0 12 * * 1/2",
]
ZONES = ["Etc/UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Europe/Berlin",
         "Asia/Kolkata"]
INSTANTS = ["2024-02-28T23:59:30Z", "2024-03-10T06:45:00Z", "2024-03-31T00:30:00Z", "2024-10-06T15:20:00Z",
            "2024-11-03T05:30:00Z", "2024-11-03T06:10:00Z", "2024-04-06T14:45:00Z", "2023-12-31T23:59:59Z"]


def iso(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def main():
    print("// Generated by tests/tools/cron_oracle.py; do not edit by hand.")
    print("// expression, zone, instant, next occurrence, previous occurrence (UTC)")
    count = 0
    for i, text in enumerate(EXPRESSIONS):
        e = Expr(text)
        for j, zone_name in enumerate(ZONES):
            zone = zoneinfo.ZoneInfo(zone_name)
            # A spread of instants per pair keeps the table a few hundred rows.
            for k, at in enumerate(INSTANTS):
                if (i + j + k) % 4:
                    continue
                t = dt.datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
                n, p = next_occ(e, t, zone), prev_occ(e, t, zone)
                print(f'{{"{text}", "{zone_name}", "{at}", "{iso(n)}", "{iso(p)}"}},')
                count += 1
    print(f"// {count} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
