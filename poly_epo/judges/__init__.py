"""Strategy judges: programmatic labels come from tasks; LM judges here."""

from poly_epo.judges.base import Judge, JudgeResult
from poly_epo.judges.http import HttpJudge
from poly_epo.judges.inprocess import InProcessJudge
from poly_epo.judges.rubric import (RUBRIC, JudgeCountError, JudgeFormatError,
                                    build_prompt, parse_labels)

__all__ = ["Judge", "JudgeResult", "HttpJudge", "InProcessJudge", "RUBRIC",
           "JudgeCountError", "JudgeFormatError", "build_prompt",
           "parse_labels"]
