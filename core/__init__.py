"""The small shared core that drivers, the agent and the rig all build on: the sample model (`model`), the
validator (`schema`), settlement-interval grids (`isp`) and UTC time stamps (`utc`). It imports nothing else
of gridedge, so the arrows run one way: drivers -> core <- agent."""
