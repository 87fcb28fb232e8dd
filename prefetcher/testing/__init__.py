"""In-memory fakes of the ports, for unit tests of the agent's logic."""
