"""A Tau2-style retail customer-service domain: a database, its tools, tasks and reward.

Layout (one concept per module):

- ``retail_db``: the database's shape (``TypedDict``s), loading, saving and hashing.
- ``tool_registry``: ``@tool``, OpenAI schemas generated from the tool functions'
  signatures (the one source of truth), ``call_tool`` (validate, run, ``Error: ...``).
- ``retail_tools``: the tools an assistant may call (``retail_calc``: ``calculate``).
- ``env``: the command line that runs one tool call against a database *file*;
  this is what runs inside a task's sandbox.
- ``tasks``: the task file's schema (msgspec) and loading.
- ``reward``: tau2-style reward (database hash match times communicated info).
- ``prompts``: the policy, the assistant's and the user simulator's system prompts.
- ``generate``: the seeded generator of ``data/db.json`` and ``data/tasks.jsonl``
  (``task_gen``: the task templates). ``data/policy.md``: the policy text.

Modules import each other relatively, so the package can be renamed.

``retail_db``, ``retail_calc``, ``tool_registry``, ``retail_tools`` and ``env`` use
only the standard library, so the environment runs in a sandbox with a bare
``python3`` and no virtual environment (``python3 path/to/agents/tau/env.py ...``).
The host-side modules use msgspec.
"""
