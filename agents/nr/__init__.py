"""NaturalReasoning-style document mining: cheap CPU filters, then three LLM roles.

The pipeline (``workflows/natural_reasoning.yaml``, routed by ``router.Pipeline``):
language ID -> quality heuristics -> exact dedup -> LLM filter -> LLM scorer ->
question writer. Each step writes into ``task.state``:

- ``kept``: ``False`` as soon as a step filters the document (the router then
  ends the task as done), ``True`` while it passes; ``filter_reason`` names the
  step that dropped it (``lang:fr``, ``length<50 words``, ``boilerplate``,
  ``duplicate``, ``llm_filter:no``, ``score<6`` ...), ``None`` while kept;
- ``lang``, ``signals`` (the heuristics' measurements), ``dedup_key``,
  ``duplicate_of``;
- ``scores`` (one per dimension, and ``mean``), ``question``,
  ``reference_answer``.

Modules: ``heuristics``, ``langid``, ``dedup`` and ``parse`` are pure;
``cpu`` and ``llm`` hold the agents; ``router`` the routing.
"""
