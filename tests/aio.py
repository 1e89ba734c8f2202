"""Running and awaiting in the tests: a deadline on every asyncio.run, and a predicate poll where no event exists."""
import asyncio
import inspect
import time


def arun(coro, timeout: float = 30.0):
    """asyncio.run with a deadline, so a hung test fails instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred, timeout: float = 10.0, every: float = 0.05):
    """Await a predicate (plain or async) with a deadline, for state that has no event of its own, such as a
    plant that has ramped or samples arriving through a callback."""
    deadline = time.monotonic() + timeout
    while True:
        result = pred()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {result!r})")
        await asyncio.sleep(every)
