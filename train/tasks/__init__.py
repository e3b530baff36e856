"""Tasks: one module per task (options, adapter, head, loss, prediction rows, scoring), its evaluator beside it,
and the registry naming them (the only list of task names)."""
