import pytest


@pytest.fixture(params=[1, 2], ids=["1worker", "2workers"])
def workers(request):
    """Every dataflow test runs with one worker (in process) and with two worker processes."""
    return request.param
