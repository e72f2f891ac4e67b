"""The Ray probe that `edgectl verify` has the agent on the Ray head run (cli/agent/src/ray_probe.rs).

It connects to the running cluster as a driver on the head, then:

- places one actor on every alive node (node affinity, soft=False, so no other node may stand
  in), makes a few warm-up calls, then times `samples` calls of each actor one after another:
  p50 and p99 of the round trip per node, nodes one at a time;
- runs one batch of CPU-bound tasks (pure Python, one CPU each) twice: all pinned to the head,
  then spread over every node in proportion to its CPUs (two tasks per CPU, each node's share
  pinned to it). The batch is sized so that the head alone takes about `scaling_s` seconds.
  Speedup is the head's time over the cluster's; the ideal is the cluster's CPUs over the head's
  (the node count when nodes are alike); efficiency is speedup over ideal.

argv[1] is one JSON object: {"address": "IP:PORT" or null (then "auto"), "samples": N,
"scaling_s": S, "budget_s": B (seconds within which every wait ends; default 200)}. Nothing
from it is ever evaluated. The answer is one JSON object on stdout; everything Ray or the tasks
print goes to stderr.
"""

import json
import math
import os
import sys
import time

WARMUP_CALLS = 10
CALL_TIMEOUT_S = 30.0
PLACE_TIMEOUT_S = 120.0


def describe(e):
    text = "%s: %s" % (type(e).__name__, e)
    return " ".join(text.split())[:600]


def percentile(sorted_ms, p):
    """Nearest rank, as edgectl's proto::percentile."""
    if not sorted_ms:
        return 0.0
    rank = int(math.ceil(p / 100.0 * len(sorted_ms)))
    return sorted_ms[min(max(rank, 1), len(sorted_ms)) - 1]


def burn(n):
    """CPU-bound work: n steps of a linear congruential generator."""
    x = 1
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x


def steps_per_second():
    """How many `burn` steps this Python does in a second (best of three short runs)."""
    n = 200000
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        burn(n)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return n / max(best, 1e-6)


def int_arg(args, key, default, lo, hi):
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        v = default
    return int(min(max(v, lo), hi))


def float_arg(args, key, default, lo, hi):
    v = args.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        v = default
    return float(min(max(v, lo), hi))


class Deadline:
    """The time the probe has left: every wait is bounded by it, so the agent (which kills the
    program after a few minutes) always gets an answer with what was measured."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self, at_most):
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("the probe ran out of time")
        return min(left, at_most)


def actors(ray, affinity, nodes, samples, deadline):
    """One actor per node, `samples` timed calls each; results go into `nodes`."""

    @ray.remote(num_cpus=0, max_restarts=0)
    class Echo:
        def node(self):
            return ray.get_runtime_context().get_node_id()

        def ping(self, x):
            return x

    handles = {}
    placed = {}
    for n in nodes:
        try:
            a = Echo.options(
                scheduling_strategy=affinity(node_id=n["node_id"], soft=False)
            ).remote()
            handles[n["node_id"]] = a
            placed[n["node_id"]] = a.node.remote()
        except Exception as e:  # noqa: BLE001 - every failure is reported, per node
            n["error"] = "actor not created: " + describe(e)
    # Every actor starts at once; each one's node is asked when all are up or time is out.
    timeout = deadline.left(PLACE_TIMEOUT_S)
    refs = list(placed.values())
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    ready = set(ready)
    for n in nodes:
        ref = placed.get(n["node_id"])
        if ref is None:
            continue
        a = handles[n["node_id"]]
        try:
            if ref not in ready:
                n["error"] = "the actor did not start within %.0f s" % timeout
                continue
            where = ray.get(ref, timeout=deadline.left(CALL_TIMEOUT_S))
            if where != n["node_id"]:
                n["error"] = "the actor ran on node %s, not on %s" % (where, n["node_id"])
                continue
            for i in range(WARMUP_CALLS):
                ray.get(a.ping.remote(i), timeout=deadline.left(CALL_TIMEOUT_S))
            rtt = []
            for i in range(samples):
                timeout = deadline.left(CALL_TIMEOUT_S)
                t0 = time.perf_counter()
                ray.get(a.ping.remote(i), timeout=timeout)
                rtt.append((time.perf_counter() - t0) * 1000.0)
            rtt.sort()
            n["samples"] = len(rtt)
            n["p50_ms"] = percentile(rtt, 50.0)
            n["p99_ms"] = percentile(rtt, 99.0)
            n["max_ms"] = rtt[-1]
        except Exception as e:  # noqa: BLE001
            n["error"] = describe(e)
    for a in handles.values():
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - the driver's end removes them anyway
            pass


def scaling(ray, affinity, nodes, head, scaling_s, deadline):
    """The same batch on the head alone and on every node; returns the scaling record."""
    cpus = {n["node_id"]: int(n["cpus"]) for n in nodes if n["cpus"] >= 1}
    head_cpus = cpus.get(head, 0)
    if head_cpus < 1:
        return {"error": "the head offers no CPU to tasks (its Ray CPU resource is 0)"}
    total = sum(cpus.values())
    tasks = 2 * total
    task_s = scaling_s * head_cpus / tasks
    steps = max(1000, int(steps_per_second() * task_s))
    limit = 20.0 * scaling_s + 120.0

    @ray.remote(num_cpus=1)
    def work(n):
        return burn(n)

    @ray.remote(num_cpus=1)
    def idle(s):
        time.sleep(s)
        return 0

    def pinned(f, node_id):
        return f.options(scheduling_strategy=affinity(node_id=node_id, soft=False))

    # Every node starts as many task workers as it has CPUs before anything is timed.
    ray.get(
        [pinned(idle, nid).remote(0.5) for nid, c in cpus.items() for _ in range(c)],
        timeout=deadline.left(limit),
    )
    on_head = pinned(work, head)
    timeout = deadline.left(limit)
    t0 = time.perf_counter()
    ray.get([on_head.remote(steps) for _ in range(tasks)], timeout=timeout)
    one = time.perf_counter() - t0
    timeout = deadline.left(limit)
    t0 = time.perf_counter()
    refs = []
    for nid, c in cpus.items():
        f = pinned(work, nid)
        refs.extend(f.remote(steps) for _ in range(2 * c))
    ray.get(refs, timeout=timeout)
    everywhere = time.perf_counter() - t0
    speedup = one / max(everywhere, 1e-9)
    ideal = total / head_cpus
    return {
        "tasks": tasks,
        "task_ms": task_s * 1000.0,
        "nodes": len(cpus),
        "head_cpus": head_cpus,
        "cpus": total,
        "one_node_s": one,
        "all_nodes_s": everywhere,
        "speedup": speedup,
        "ideal": ideal,
        "efficiency": speedup / ideal,
    }


def probe(args, out):
    address = args.get("address")
    if not isinstance(address, str) or not address:
        address = "auto"
    samples = int_arg(args, "samples", 200, 1, 10000)
    scaling_s = float_arg(args, "scaling_s", 3.0, 0.2, 60.0)
    deadline = Deadline(float_arg(args, "budget_s", 200.0, 10.0, 3600.0))

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    out["ray_version"] = ray.__version__
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        head = ray.get_runtime_context().get_node_id()
        out["head"] = head
        nodes = []
        for n in ray.nodes():
            if not n.get("Alive"):
                continue
            res = n.get("Resources") or {}
            nodes.append(
                {
                    "node_id": n.get("NodeID", ""),
                    "address": n.get("NodeManagerAddress", ""),
                    "hostname": n.get("NodeManagerHostname", ""),
                    "cpus": float(res.get("CPU", 0.0)),
                }
            )
        # The head first, then by address: a stable order for the report.
        nodes.sort(key=lambda n: (n["node_id"] != head, n["address"]))
        out["nodes"] = nodes
        actors(ray, NodeAffinitySchedulingStrategy, nodes, samples, deadline)
        try:
            out["scaling"] = scaling(
                ray, NodeAffinitySchedulingStrategy, nodes, head, scaling_s, deadline
            )
        except Exception as e:  # noqa: BLE001
            out["scaling"] = {"error": describe(e)}
    finally:
        ray.shutdown()


def finite(v):
    """`v` without the entries JSON cannot hold (NaN, infinities): a reader takes them as absent."""
    if isinstance(v, dict):
        return {
            k: finite(x)
            for k, x in v.items()
            if not (isinstance(x, float) and not math.isfinite(x))
        }
    if isinstance(v, list):
        return [finite(x) for x in v if not (isinstance(x, float) and not math.isfinite(x))]
    return v


def main(argv):
    # The answer alone goes to the real stdout; Ray's own output, Python's and its C++ core's,
    # goes to stderr.
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = {
        "ray_version": None,
        "python": sys.executable,
        "head": None,
        "nodes": [],
        "scaling": None,
        "error": None,
    }
    try:
        args = json.loads(argv[1]) if len(argv) > 1 else {}
        if not isinstance(args, dict):
            raise ValueError("the argument is not a JSON object")
        probe(args, out)
    except BaseException as e:  # noqa: BLE001 - even KeyboardInterrupt gets an answer
        out["error"] = describe(e)
    answer.write(json.dumps(finite(out), allow_nan=False) + "\n")
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
