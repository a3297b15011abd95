#!/usr/bin/env python3
"""N VMs at once, each source on its own agent: what each VM drove (load's own report) against what the agent counted
for it, beside what the agent says it lost or could not attribute. Prints a Markdown table, one row per source.

Runs where a /dev/kvm is (the host itself, the test VM, the 16-CPU device host), as root, from the repository root:
  tests/scale/vms_at_once.py [--vms 12] [--count 100000] [--sources bpf,tracefs,perf,perf-count] [--agent CMD]
CMD runs the agent and load (default: dotnet on the Debug build; on the device host: kvmobserve from .dev/).
"""
import argparse, json, os, re, shlex, signal, subprocess, sys, tempfile, time, urllib.request

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text):
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            yield m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))


def total(metrics, name, **match):
    return sum(v for n, labels, v in metrics if n == name and all(labels.get(k) == x for k, x in match.items()))


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def run_source(source, args, agent, out):
    port = 19931
    log = open(os.path.join(out, f"agent-{source}.log"), "w")
    proc = subprocess.Popen(agent + ["run", "--source", source, "--listen", f"127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        deadline = time.time() + 120
        while True:
            try:
                get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{source}: the agent did not answer /healthz (see {log.name})")
                time.sleep(0.2)
        started = time.time()
        report = subprocess.run(agent + ["load", "--mode", "pio", "--vms", str(args.vms), "--vcpus", str(args.vcpus),
                                         "--count", str(args.count), "--name", f"scale-{source}"],
                                check=True, capture_output=True, text=True, timeout=args.load_timeout).stdout
        took = time.time() - started
        time.sleep(args.settle)
        text = get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    for name, content in ((f"load-{source}.json", report), (f"metrics-{source}.txt", text)):
        with open(os.path.join(out, name), "w") as f:
            f.write(content)
    metrics = list(samples(text))
    vms = json.loads(report)["vms"]
    driven = {vm["name"]: sum(sum(v["pio"].values()) for v in vm["vcpus"]) for vm in vms}
    counted = {name: total(metrics, "kvm_pio_total", vm=name) for name in driven}
    exact = sum(1 for n in driven if counted[n] == driven[n])
    over = [n for n in driven if counted[n] > driven[n]]
    lost = total(metrics, "kvmobserve_events_lost_total")
    unattributed = total(metrics, "kvmobserve_events_unattributed_total", event="kvm_pio")
    short = sum(driven.values()) - sum(counted.values())
    worst = min(counted[n] / driven[n] for n in driven) if driven else 1
    verdict = ("exact" if short == 0 and not over else "COUNTED MORE THAN DROVE" if over or short < 0
               else "short, within the reported loss" if short <= lost + unattributed else "SHORT BEYOND WHAT IT REPORTS")
    return (f"| {source} | {exact}/{len(driven)} (worst {worst:.1%}) | {int(sum(counted.values())):,} of "
            f"{sum(driven.values()):,} | {int(lost):,} | {int(unattributed):,} | {took:.0f} s | {verdict} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vms", type=int, default=12)
    p.add_argument("--vcpus", type=int, default=1)
    p.add_argument("--count", type=int, default=100000)
    p.add_argument("--sources", default="bpf,tracefs,perf,perf-count")
    p.add_argument("--agent", default="dotnet src/KvmObserve.Agent/bin/Debug/net10.0/kvmobserve.dll")
    p.add_argument("--settle", type=float, default=20, help="seconds between load's end and the scrape")
    p.add_argument("--load-timeout", type=float, default=1800)
    p.add_argument("--out", default=None, help="where the logs, load reports and scrapes go (default: a temp dir)")
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="kvmobserve-scale-")
    os.makedirs(out, exist_ok=True)
    print(f"{args.vms} VMs x {args.vcpus} vCPU x {args.count:,} PIO exits at once, {os.cpu_count()} CPUs; files in {out}")
    print("| source | VMs exact | kvm_pio counted | lost (all events) | unattributed kvm_pio | load took | verdict |")
    print("|---|---|---|---|---|---|---|")
    for source in args.sources.split(","):
        print(run_source(source, args, shlex.split(args.agent), out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
