"""Ray, local or joined: an address nothing answers at is one clear error at once; tasks run in
parallel and a failed one raises its own exception after the others finished."""

import socket
import sys
import time

import pytest

from ibdml.cli import main
from ibdml.cluster import ClusterError, check_reachable, ray_session, run_tasks


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing listens there


def test_an_unreachable_address_is_a_clear_error_at_once():
    start = time.time()
    with pytest.raises(ClusterError) as e:
        check_reachable(f"127.0.0.1:{closed_port()}")
    assert time.time() - start < 6
    assert "cannot reach a Ray cluster" in str(e.value) and "ray start --head" in str(e.value)


@pytest.mark.parametrize("address", ["10.0.0.5", "head:port", ":6379"])
def test_an_address_without_host_and_port(address):
    with pytest.raises(ClusterError, match="is not host:port"):
        check_reachable(address)


def test_the_cli_says_so_in_one_line(capsys, tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    code = main(["sweep", "params/smoke.yaml", "--space", "params/search/glyphs.yaml",
                 "--trials", "2", "--out", str(tmp_path / "s"), "--address", address])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"ibdml: error: cannot reach a Ray cluster at {address}")
    assert not (tmp_path / "s").exists()  # nothing written
    code = main(["claims", "params/smoke.yaml", "--out", str(tmp_path / "c"), "--address",
                 address])
    assert code == 2 and "cannot reach a Ray cluster" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def by_value(fn):
    """Ray's workers cannot import a test module: send the function itself."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return fn


def pause_and_report(seconds: float, value: int) -> tuple[int, float, float]:
    start = time.time()
    time.sleep(seconds)
    return value, start, time.time()


def fail_on(value: int) -> int:
    if value == 1:
        raise KeyError("job 1 failed")
    time.sleep(0.5)
    return value


def test_tasks_run_in_parallel_and_return_in_order(local_ray):
    with ray_session():
        results = run_tasks(by_value(pause_and_report), [(1.0, 0), (1.0, 1)], cpus=1)
    assert [r[0] for r in results] == [0, 1]
    (_, start0, end0), (_, start1, end1) = results
    assert start1 < end0 and start0 < end1  # the two overlapped: 2 CPUs, 1 each


def test_a_failed_task_raises_its_own_error_after_the_others(local_ray, tmp_path):
    with ray_session(), pytest.raises(KeyError, match="job 1 failed"):
        run_tasks(by_value(fail_on), [(0,), (1,), (2,)], cpus=1)
