"""Tasks: prompt sources, rewards, strategy labels, base corpora.

`poly_epo.tasks.get(name, **options)` builds a registered task. Add your own
from any module (no package edit):

    from poly_epo import tasks

    @tasks.register_task("my_task")
    class MyTask(tasks.Task):
      def _prompts(self, split, seed, count): ...
      def _reward(self, prompt, response): ...
"""

from poly_epo.tasks import chat, math, multiplication, polynomial  # noqa: F401
from poly_epo.tasks.base import (Task, get, identity, labels_by_answer,
                                 register_task, task_names)

__all__ = ["Task", "get", "identity", "labels_by_answer", "register_task",
           "task_names"]
