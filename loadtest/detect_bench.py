"""Benchmark of `detect` (find, validate and replace) on free text, against its baselines run
in the same process on the same lines:

- Python `re`, per string, with the same types' patterns (and Luhn / mod-97 / SSN checks as
  `re.sub` callbacks), on a sample, scaled;
- pyarrow.compute's RE2: `replace_substring_regex` once per pattern over the column (no check
  digits: RE2 cannot run them), and `extract_regex` with one alternation of all patterns (finds
  the first match per value only, replaces nothing);
- Presidio's analyzer + anonymizer with pattern recognizers only and a blank spaCy tokenizer
  (loadtest/detect_corpus.presidio_analyzer), on a sample, scaled;
- with `--engines`: candidate finding alone by hyperscan over the whole buffer (its Python
  callback runs once per match) against the Numba scan.

Lines are ~120-byte log lines from loadtest/detect_corpus (a pool of 20,000 distinct lines,
repeated to `--records`). Times are CPU seconds of this process (time.process_time), since the
machine may be shared; figures are provisional, the ratios against the baselines run beside them
are what to compare.

    python -m raymask.loadtest.detect_bench --records 1000000 [--engines] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import time

import pyarrow as pa
import pyarrow.compute as pc

from raymask.kernels import detect as detect_kernel
from raymask.loadtest.detect_corpus import generate

__all__ = ["PATTERNS", "main", "run"]

# the same types as the detector, as regexes that both Python re and RE2 take
PATTERNS = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "card": r"\b(?:\d[ -]?){12,18}\d\b",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b",
    "phone": r"\+[1-9][0-9 ().-]{7,18}[0-9]|\([0-9]{3}\) [0-9]{3}-[0-9]{4}|\b[0-9]{3}[-.][0-9]{3}[-.][0-9]{4}\b",
    "ipv4": r"\b(?:(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\b",
    "ipv6": r"(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}|::[0-9A-Fa-f]{1,4}",
    "ssn": r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b",
    "mac": r"\b[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}\b",
    "aws_key": r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{22,}",
    "slack_token": r"\bxox[bpas]-[A-Za-z0-9-]{10,}",
    "stripe_key": r"\b[sr]k_live_[A-Za-z0-9]{16,}",
    "jwt": r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    "bearer_token": r"[Bb]earer +[A-Za-z0-9._~+/-]{16,}=*",
    "private_key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    "url_credentials": r"[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]+:[^@/\s]+@",
}  # fmt: skip


def _luhn(s: str) -> bool:
    d = [int(c) for c in s if c.isdigit()]
    tot = 0
    for i, x in enumerate(reversed(d)):
        x = x * 2 if i % 2 else x
        tot += x - 9 if x > 9 else x
    return tot % 10 == 0


def _mod97(s: str) -> bool:
    s = s.replace(" ", "")
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def _ssn(s: str) -> bool:
    a, g, n = s.split("-")
    return a not in ("000", "666") and a[0] != "9" and g != "00" and n != "0000"


_CHECKS = {"card": _luhn, "iban": _mod97, "ssn": _ssn}


def python_re(texts: list[str]) -> list[str]:
    """Per string, each pattern's `re.sub` (with its check as a callback)."""
    compiled = []
    for name, p in PATTERNS.items():
        rep = f"<{name.upper()}>"
        check = _CHECKS.get(name)
        if check is None:
            compiled.append((re.compile(p), rep))
        else:
            compiled.append(
                (re.compile(p), lambda m, c=check, r=rep: r if c(m.group(0)) else m.group(0))
            )
    out = []
    for t in texts:
        for rx, rep in compiled:
            t = rx.sub(rep, t)
        out.append(t)
    return out


def re2_replace(arr: pa.Array) -> pa.Array:
    for name, p in PATTERNS.items():
        arr = pc.replace_substring_regex(arr, p, f"<{name.upper()}>")
    return arr


def re2_extract(arr: pa.Array) -> pa.Array:
    combined = "|".join(f"(?P<{n}>{p})" for n, p in PATTERNS.items())
    return pc.extract_regex(arr, "(?s)" + combined)


def raymask_detect(arr: pa.Array) -> pa.Array:
    spans = detect_kernel.detect(arr)
    return detect_kernel.splice(
        arr, spans, [f"<{t.upper()}>".encode() for t in detect_kernel.TYPES]
    )


def presidio(texts: list[str]) -> list[str]:
    from presidio_anonymizer import AnonymizerEngine

    from raymask.loadtest.detect_corpus import PRESIDIO_TYPES, presidio_analyzer

    analyzer = presidio_analyzer()
    anonymizer = AnonymizerEngine()
    out = []
    for t in texts:
        res = analyzer.analyze(t, language="en", entities=list(PRESIDIO_TYPES))
        out.append(anonymizer.anonymize(t, res).text)
    return out


def hyperscan_find(arr: pa.Array) -> int:
    """Candidate finding alone: every pattern over the whole data buffer in one hyperscan call,
    start of match on (as a detector needs spans); the Python callback counts matches."""
    import hyperscan

    db = hyperscan.Database()
    exprs = [p.replace(r"\b", "").encode() for p in PATTERNS.values()]
    db.compile(
        expressions=exprs, ids=list(range(len(exprs))),
        flags=[hyperscan.HS_FLAG_SOM_LEFTMOST | hyperscan.HS_FLAG_DOTALL] * len(exprs),
    )  # fmt: skip
    buf = arr.buffers()[2].to_pybytes()
    hits = [0]

    def on_match(i, a, b, flags, ctx):  # noqa: ANN001, ANN202
        hits[0] += 1

    t = time.process_time()
    db.scan(buf, match_event_handler=on_match)
    return hits[0], time.process_time() - t


def _time(fn, *a, repeat: int = 3) -> float:  # noqa: ANN001
    """Best CPU time of this process (all its threads) over `repeat` runs: on a machine shared
    with other jobs, wall time measures the neighbours as much as the code."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn(*a)
        best = min(best, time.process_time() - t)
    return best


def run(records: int, *, re_sample: int = 20_000, presidio_sample: int = 1_000,
        engines: bool = False, with_presidio: bool = True, seed: int = 0) -> dict:  # fmt: skip
    pool = [x.text for x in generate(min(records, 20_000), seed)]
    texts = (pool * (records // len(pool) + 1))[:records]
    arr = pa.array(texts, pa.large_string())
    nbytes = arr.buffers()[2].size
    mb = nbytes / 1e6
    raymask_detect(arr.slice(0, 100))  # compile (cached on disk after the first run)
    res: dict = {"records": records, "mean_bytes": round(nbytes / records, 1)}
    t = _time(raymask_detect, arr)
    res["raymask"] = {"seconds": t, "records_per_s": records / t, "mb_per_s": mb / t}
    t_find = _time(lambda a: detect_kernel.detect(a), arr)
    res["raymask_find_only"] = {"seconds": t_find, "mb_per_s": mb / t_find}

    k = min(re_sample, records)
    t = _time(python_re, texts[:k], repeat=1) * records / k
    res["python_re"] = {"seconds": t, "records_per_s": records / t, "mb_per_s": mb / t,
                        "sample": k, "ratio": t / res["raymask"]["seconds"]}  # fmt: skip
    t = _time(re2_replace, arr, repeat=1)
    res["re2_replace"] = {"seconds": t, "records_per_s": records / t, "mb_per_s": mb / t,
                          "ratio": t / res["raymask"]["seconds"]}  # fmt: skip
    t = _time(re2_extract, arr, repeat=1)
    res["re2_extract_first_match"] = {"seconds": t, "mb_per_s": mb / t,
                                      "ratio": t / res["raymask"]["seconds"]}  # fmt: skip
    if with_presidio:
        k = min(presidio_sample, records)
        presidio(texts[:5])  # load the engines outside the timing
        t = _time(presidio, texts[:k], repeat=1) * records / k
        res["presidio"] = {"seconds": t, "records_per_s": records / t, "mb_per_s": mb / t,
                           "sample": k, "ratio": t / res["raymask"]["seconds"]}  # fmt: skip
    if engines:
        hits, t = hyperscan_find(arr)
        res["hyperscan_find"] = {"seconds": t, "mb_per_s": mb / t, "matches": hits,
                                 "ratio_vs_numba_find": t / t_find}  # fmt: skip
        t = _time(re2_extract, arr, repeat=1)
        res["re2_find"] = {"seconds": t, "mb_per_s": mb / t}
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--re-sample", type=int, default=20_000, help="Lines timed for Python re.")
    ap.add_argument("--presidio-sample", type=int, default=1_000, help="Lines timed for Presidio.")
    ap.add_argument("--no-presidio", action="store_true")
    ap.add_argument(
        "--engines", action="store_true", help="Also time hyperscan's candidate finding."
    )
    ap.add_argument("--json", help="Write the figures to this file.")
    a = ap.parse_args(argv)
    res = run(a.records, re_sample=a.re_sample, presidio_sample=a.presidio_sample,
              engines=a.engines, with_presidio=not a.no_presidio)  # fmt: skip
    r = res["raymask"]
    print(f"{res['records']:,} lines, {res['mean_bytes']} bytes each on average")
    print(f"raymask detect+replace: {r['records_per_s']:,.0f} records/s, {r['mb_per_s']:.1f} MB/s "
          f"(find only {res['raymask_find_only']['mb_per_s']:.1f} MB/s)")  # fmt: skip
    for k in ("python_re", "re2_replace", "re2_extract_first_match", "presidio"):
        if k in res:
            x = res[k]
            print(f"{k:24s} {x['mb_per_s']:8.2f} MB/s   raymask is {x['ratio']:.1f}x faster")
    if "hyperscan_find" in res:
        h = res["hyperscan_find"]
        print(f"hyperscan find (SOM, Python callback): {h['mb_per_s']:.1f} MB/s, {h['matches']:,} "
              f"matches; Numba find is {h['ratio_vs_numba_find']:.1f}x faster; "
              f"RE2 one alternation: {res['re2_find']['mb_per_s']:.1f} MB/s")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
