"""The rollout engine, as parts with one job each (docs/ARCHITECTURE.md):

- `settings`: `RolloutSettings`, a rollout's settings resolved once for a
  target platform (every "auto" decided, bad combinations refused);
- `spec`: one device program's static settings (`plan_spec`);
- `draw`: the sampling rule and the per-token draw (a leaf);
- `loop`: the device loop (static and continuous schedules, the narrowing
  tail), jitted as `begin` / `segment`;
- `host`: the host driver (`run`: segments, `on_done`, this process's rows);
- `layouts`: the contiguous and paged caches behind one interface;
- `allocator` / `allocator_host`: the page policy (JAX, and its NumPy twin
  for the planner);
- `pool`: the paged cache's reads and writes;
- `kernels`: the decode-attention kernel registry.

Import the parts (`from poly_epo.engine import host`); this package itself
imports nothing, so the model can use `engine.kernels` without a cycle.
"""
