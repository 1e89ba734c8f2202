"""The local control engine (docs/architecture.md, "Control"): activations, grid-code functions, fail-safe.

- `activation`: what an activation is (states, shares over devices, results, events); `book`: the activation
  state machine (sans-IO): received, validated, scheduled, active, then completed, expired, cancelled or
  terminated; priorities, conflicts, traffic light, fail-safe, restart, the observer hook.
- `profiles`: IEEE 1547-2018 Cat B and EN 50549 / VDE-AR-N 4105 parameter profiles and curve checks.
- `capability`: what a device can do (rating, prequalified limits); `measure`: what the cycle reads of it.
- `controllers`: one unit per function (prequalified limits, local functions, remote set-points, POC limit),
  one signature; `planner`: runs them in priority order, then the kernel and the points, for one cycle (sans-IO).
- `engine`: the asyncio cycle (read image, tick, controllers, writers) and the fail-safe; `writer`: one task
  per device writing its set-points.
"""
