"""The local control engine (docs/architecture.md, "Control"): activations, grid-code functions, fail-safe.

- `activation`: the activation state machine (sans-IO): received, validated, scheduled, active, then completed,
  expired, cancelled or terminated; priorities, conflicts, traffic light, the observer hook.
- `profiles`: IEEE 1547-2018 Cat B and EN 50549 / VDE-AR-N 4105 parameter profiles and curve checks.
- `capability`: what a device can do (rating, prequalified limits) and which points carry its set-points.
- `controllers`: one class per function, against capabilities; `plan` runs them for one cycle (sans-IO).
- `engine`: the asyncio cycle: process image -> controllers in priority order -> writes; fail-safe reversion.
"""
