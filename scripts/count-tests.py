#!/usr/bin/env python3
"""Count test cases from meson's testlog.json files.

A test speaking TAP (the Criterion suites) counts one case per 'ok'/'not ok' line; a test
that failed without reporting a failing case counts one more failure (it crashed or timed
out). A plain executable counts as one case. A sanitizer report anywhere in a test's output
(AddressSanitizer, LeakSanitizer, UBSan "runtime error", ThreadSanitizer) counts one more
failure even when the runner said the cases passed: Criterion reports a leak found at a
child's exit only as a warning. Prints 'N passed, M failed' for all the logs.
"""
import json
import re
import sys

SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|"
                       r": runtime error: ")

passed = failed = 0
for path in sys.argv[1:]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            t = json.loads(line)
            result = t.get("result", "")
            if result == "SKIP":
                continue
            ok = result in ("OK", "EXPECTEDFAIL")
            out = t.get("stdout") or ""
            # Criterion writes "ok - suite::name", TAP allows "ok 3 - name"; skips don't pass
            n_ok = len([m for m in re.findall(r"^ok\b.*$", out, re.M) if "# SKIP" not in m])
            n_fail = len(re.findall(r"^not ok\b", out, re.M))
            if n_ok or n_fail:
                passed += n_ok
                failed += n_fail
                if not ok and n_fail == 0:
                    failed += 1
            elif ok:
                passed += 1
            else:
                failed += 1
            if SANITIZER.search(out + (t.get("stderr") or "")):
                failed += 1
                ok = False
                result += " + sanitizer report"
            if not ok:
                print(f"FAILED: {t.get('name')} ({result}) in {path}", file=sys.stderr)
print(f"{passed} passed, {failed} failed")
