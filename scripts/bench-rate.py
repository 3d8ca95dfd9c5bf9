#!/usr/bin/env python3
"""Bandwidth limit benchmark: `--max-rate` measured against its limit, in one run.

For each limit (default 10MiB/s and 50MiB/s) it backs up about 20 seconds' worth of
incompressible bytes (`worker backup command -- head -c N /dev/urandom`, so what is
uploaded is what was read) into a local store and into the services' S3, then verifies that backup with the key
(a full download and decryption), each under `--max-rate`, and prints the measured rate of
each beside the limit. The limit allows one second of burst, which the ~20 s runs keep
within a few percent. The same backup and verify without a limit show what the machine
does unbounded. Times are whole commands: on S3 they include the multipart upload's
completion, which s3s-fs does by copying every part on its disk once the bytes are in.

Usage (services from scripts/services.sh; builds release binaries):

  scripts/bench-rate.py [RATE_MIB …]    default: 10 50
"""
import os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, measure  # noqa: E402

MIB = 1024 * 1024


def main():
    rates = [int(a) for a in sys.argv[1:]] or [10, 50]
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    worker = os.path.join(ROOT, "target", "release", "worker")
    plugin = os.path.join(ROOT, "target", "release", "kubectl-dr")
    work = tempfile.mkdtemp(dir=os.path.join(ROOT, ".dr-services"), prefix="bench-rate-")
    key = subprocess.run(["age-keygen", "-o", f"{work}/key.txt"], capture_output=True, text=True,
                         check=True).stderr
    recipient = key.split("Public key: ")[1].strip()
    stores = {"local": f"file://{work}/store", "s3 (s3s-fs)": f"s3://dr-test/bench-rate-{os.getpid()}"}
    for name, store in stores.items():
        run_on(name, store, rates, worker, plugin, recipient, work)
    subprocess.run(["rm", "-rf", work], check=True)


def run_on(name, store, rates, worker, plugin, recipient, work):
    rows = []
    for rate in rates + [None]:
        size = (rate or 50) * 20 * MIB
        limit = f"--max-rate {rate}MiB/s" if rate else ""
        target = f"rate{rate or 'none'}"
        backup = measure(f"{worker} backup command --target {target} --store {store} -r {recipient} "
                         f"--compression none {limit} -- head -c {size} /dev/urandom > /dev/null 2>> {work}/log")
        verify = measure(f"{plugin} verify latest --engine command --target {target} -i {work}/key.txt "
                         f"--store {store} --no-progress {limit} > /dev/null 2>> {work}/log")
        rows.append((rate, size, backup[0], verify[0], backup[2], verify[2]))
    print(f"\n{name}")
    print(f"{'limit':>10}  {'bytes':>9}  {'backup':>8}  {'upload rate':>12}  {'verify':>8}  "
          f"{'download rate':>14}  {'peak RSS backup/verify':>22}")
    for rate, size, b, v, brss, vrss in rows:
        shown = f"{rate} MiB/s" if rate else "none"

        def off(measured):
            return f" ({(measured / rate - 1) * 100:+.0f}%)" if rate else ""
        up, down = size / MIB / b, size / MIB / v
        print(f"{shown:>10}  {size // MIB:>5} MiB  {b:>6.1f} s  {up:>6.1f} MiB/s{off(up):>7}  {v:>6.1f} s  "
              f"{down:>6.1f} MiB/s{off(down):>7}  {brss:>10.0f} / {vrss:.0f} MiB")


if __name__ == "__main__":
    main()
