import pickle
import threading

from django_resto.fanout import FanOut, Outcome


def test_outcomes_in_host_order_with_errors_captured():
    def work(host, value):
        if host == "b":
            raise RuntimeError("b is down")
        return f"{host}:{value}"

    outcomes = FanOut(4).run(work, ["a", "b", "c"], 7)
    assert [o.host for o in outcomes] == ["a", "b", "c"]
    assert [o.result for o in outcomes] == ["a:7", None, "c:7"]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, RuntimeError)
    assert str(outcomes[1].error) == "b is down"


def test_runs_hosts_in_parallel():
    # Every call waits for all three to have started: a sequential fan-out would
    # time out on the barrier and report BrokenBarrierError for each host.
    barrier = threading.Barrier(3, timeout=5)

    def work(host):
        barrier.wait()
        return threading.current_thread().name

    outcomes = FanOut(4).run(work, ["a", "b", "c"])
    assert all(o.ok for o in outcomes), outcomes
    assert outcomes[0].result == threading.current_thread().name
    assert len({o.result for o in outcomes}) == 3


def test_no_hosts():
    assert FanOut(2).run(lambda host: host, []) == []


def test_single_host_runs_inline_without_a_pool():
    fanout = FanOut(2)
    outcomes = fanout.run(lambda host: threading.current_thread().name, ["only"])
    assert outcomes == [
        Outcome("only", result=threading.current_thread().name, elapsed=outcomes[0].elapsed)
    ]
    assert fanout._executor is None


def test_picklable_after_use():
    fanout = FanOut(3)
    fanout.run(lambda host: host, ["a", "b"])
    clone = pickle.loads(pickle.dumps(fanout))
    assert clone.max_workers == 3
    assert [o.result for o in clone.run(lambda host: host, ["x", "y"])] == ["x", "y"]
    fanout.shutdown()
