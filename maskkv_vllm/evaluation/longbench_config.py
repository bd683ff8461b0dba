"""Per-task configuration of LongBench (v1): prompts, output lengths, metrics.

``DATASET2PROMPT`` and ``DATASET2MAXLEN`` reproduce, string for string, the
official ``LongBench/config/dataset2prompt.json`` and ``dataset2maxlen.json`` of
THUDM/LongBench (main branch; unchanged since the 2023-08-29 paper release).
That includes the official typo "asconcisely" in the narrativeqa template (a
"Fix grammar" pull request correcting it was never merged): every published
LongBench number was produced with it.

Which metric each task uses, which predictions are cut to their first line, and
which tasks run without a chat template follow the official ``eval.py`` and
``pred.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

# The 21 LongBench v1 tasks (English and Chinese), in the order of pred.py.
LONGBENCH_TASKS: tuple[str, ...] = (
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "multifieldqa_zh",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "dureader",
    "gov_report",
    "qmsum",
    "multi_news",
    "vcsum",
    "trec",
    "triviaqa",
    "samsum",
    "lsht",
    "passage_count",
    "passage_retrieval_en",
    "passage_retrieval_zh",
    "lcc",
    "repobench-p",
)

# The 14 tasks the MaskKV paper reports (its LongBench table and average).
PAPER_TASKS: tuple[str, ...] = (
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
)

# Official prompt templates, filled with ``template.format(**row)``.
DATASET2PROMPT: dict[str, str] = {
    "narrativeqa": (
        "You are given a story, which can be either a novel or a "
        "movie script, and a question. Answer the question "
        "asconcisely as you can, using a single phrase if possible. "
        "Do not provide any explanation.\n"
        "\n"
        "Story: {context}\n"
        "\n"
        "Now, answer the question based on the story asconcisely as "
        "you can, using a single phrase if possible. Do not provide "
        "any explanation.\n"
        "\n"
        "Question: {input}\n"
        "\n"
        "Answer:"
    ),
    "qasper": (
        "You are given a scientific article and a question. Answer "
        "the question as concisely as you can, using a single phrase "
        "or sentence if possible. If the question cannot be answered "
        "based on the information in the article, write "
        '"unanswerable". If the question is a yes/no question, '
        'answer "yes", "no", or "unanswerable". Do not provide any explanation.\n'
        "\n"
        "Article: {context}\n"
        "\n"
        " Answer the question based on the above article as "
        "concisely as you can, using a single phrase or sentence if "
        "possible. If the question cannot be answered based on the "
        'information in the article, write "unanswerable". If the '
        'question is a yes/no question, answer "yes", "no", or '
        '"unanswerable". Do not provide any explanation.\n'
        "\n"
        "Question: {input}\n"
        "\n"
        "Answer:"
    ),
    "multifieldqa_en": (
        "Read the following text and answer briefly.\n"
        "\n"
        "{context}\n"
        "\n"
        "Now, answer the following question based on the above text, "
        "only give me the answer and do not output any other words.\n"
        "\n"
        "Question: {input}\n"
        "Answer:"
    ),
    "multifieldqa_zh": (
        "阅读以下文字并用中文简短回答：\n"
        "\n"
        "{context}\n"
        "\n"
        "现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n"
        "\n"
        "问题：{input}\n"
        "回答："
    ),
    "hotpotqa": (
        "Answer the question based on the given passages. Only give "
        "me the answer and do not output any other words.\n"
        "\n"
        "The following are given passages.\n"
        "{context}\n"
        "\n"
        "Answer the question based on the given passages. Only give "
        "me the answer and do not output any other words.\n"
        "\n"
        "Question: {input}\n"
        "Answer:"
    ),
    "2wikimqa": (
        "Answer the question based on the given passages. Only give "
        "me the answer and do not output any other words.\n"
        "\n"
        "The following are given passages.\n"
        "{context}\n"
        "\n"
        "Answer the question based on the given passages. Only give "
        "me the answer and do not output any other words.\n"
        "\n"
        "Question: {input}\n"
        "Answer:"
    ),
    "musique": (
        "Answer the question based on the given passages. Only give "
        "me the answer and do not output any other words.\n"
        "\n"
        "The following are given passages.\n"
        "{context}\n"
        "\n"
        "Answer the question based on the given passages. Only give "
        "me the answer and do not output any other words.\n"
        "\n"
        "Question: {input}\n"
        "Answer:"
    ),
    "dureader": (
        "请基于给定的文章回答下述问题。\n"
        "\n"
        "文章：{context}\n"
        "\n"
        "请基于上述文章回答下面的问题。\n"
        "\n"
        "问题：{input}\n"
        "回答："
    ),
    "gov_report": (
        "You are given a report by a government agency. Write a "
        "one-page summary of the report.\n"
        "\n"
        "Report:\n"
        "{context}\n"
        "\n"
        "Now, write a one-page summary of the report.\n"
        "\n"
        "Summary:"
    ),
    "qmsum": (
        "You are given a meeting transcript and a query containing a "
        "question or instruction. Answer the query in one or more sentences.\n"
        "\n"
        "Transcript:\n"
        "{context}\n"
        "\n"
        "Now, answer the query based on the above meeting transcript "
        "in one or more sentences.\n"
        "\n"
        "Query: {input}\n"
        "Answer:"
    ),
    "multi_news": (
        "You are given several news passages. Write a one-page "
        "summary of all news. \n"
        "\n"
        "News:\n"
        "{context}\n"
        "\n"
        "Now, write a one-page summary of all the news.\n"
        "\n"
        "Summary:"
    ),
    "vcsum": (
        "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n"
        "会议记录：\n"
        "{context}\n"
        "\n"
        "会议总结："
    ),
    "trec": (
        "Please determine the type of the question below. Here are "
        "some examples of questions.\n"
        "\n"
        "{context}\n"
        "{input}"
    ),
    "triviaqa": (
        "Answer the question based on the given passage. Only give "
        "me the answer and do not output any other words. The "
        "following are some examples.\n"
        "\n"
        "{context}\n"
        "\n"
        "{input}"
    ),
    "samsum": (
        "Summarize the dialogue into a few short sentences. The "
        "following are some examples.\n"
        "\n"
        "{context}\n"
        "\n"
        "{input}"
    ),
    "lsht": ("请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}"),
    "passage_count": (
        "There are some paragraphs below sourced from Wikipedia. "
        "Some of them may be duplicates. Please carefully read these "
        "paragraphs and determine how many unique paragraphs there "
        "are after removing duplicates. In other words, how many "
        "non-repeating paragraphs are there in total?\n"
        "\n"
        "{context}\n"
        "\n"
        "Please enter the final count of unique paragraphs after "
        "removing duplicates. The output format should only contain "
        "the number, such as 1, 2, 3, and so on.\n"
        "\n"
        "The final answer is: "
    ),
    "passage_retrieval_en": (
        "Here are 30 paragraphs from Wikipedia, along with an "
        "abstract. Please determine which paragraph the abstract is from.\n"
        "\n"
        "{context}\n"
        "\n"
        "The following is an abstract.\n"
        "\n"
        "{input}\n"
        "\n"
        "Please enter the number of the paragraph that the abstract "
        'is from. The answer format must be like "Paragraph 1", '
        '"Paragraph 2", etc.\n'
        "\n"
        "The answer is: "
    ),
    "passage_retrieval_zh": (
        "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n"
        "\n"
        "{context}\n"
        "\n"
        "下面是一个摘要\n"
        "\n"
        "{input}\n"
        "\n"
        '请输入摘要所属段落的编号。答案格式必须是"段落1"，"段落2"等格式\n'
        "\n"
        "答案是："
    ),
    "lcc": ("Please complete the code given below. \n{context}Next line of code:\n"),
    "repobench-p": (
        "Please complete the code given below. \n{context}{input}Next line of code:\n"
    ),
}

DATASET2MAXLEN: dict[str, int] = {
    "narrativeqa": 128,
    "qasper": 128,
    "multifieldqa_en": 64,
    "multifieldqa_zh": 64,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "dureader": 128,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
    "vcsum": 512,
    "trec": 64,
    "triviaqa": 32,
    "samsum": 128,
    "lsht": 64,
    "passage_count": 32,
    "passage_retrieval_en": 32,
    "passage_retrieval_zh": 32,
    "lcc": 64,
    "repobench-p": 64,
}


# Metric of each task (names of ``longbench_metrics.METRICS``), as in eval.py.
DATASET2METRIC: dict[str, str] = {
    "narrativeqa": "qa_f1",
    "qasper": "qa_f1",
    "multifieldqa_en": "qa_f1",
    "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1",
    "2wikimqa": "qa_f1",
    "musique": "qa_f1",
    "dureader": "rouge_zh",
    "gov_report": "rouge",
    "qmsum": "rouge",
    "multi_news": "rouge",
    "vcsum": "rouge_zh",
    "trec": "classification",
    "triviaqa": "qa_f1",
    "samsum": "rouge",
    "lsht": "classification",
    "passage_count": "count",
    "passage_retrieval_en": "retrieval",
    "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_sim",
    "repobench-p": "code_sim",
}

# eval.py scores only the first line of these tasks' predictions (few-shot
# tasks, where a model tends to continue with the next example).
FIRST_LINE_TASKS: frozenset[str] = frozenset({"trec", "triviaqa", "samsum", "lsht"})

# pred.py feeds these tasks to chat models without the chat template
# ("chat models are better off without build prompts on these tasks").
NO_CHAT_TASKS: frozenset[str] = frozenset(
    {"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"}
)

ZH_TASKS: frozenset[str] = frozenset(
    {"multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"}
)
CODE_TASKS: frozenset[str] = frozenset({"lcc", "repobench-p"})


@dataclass(frozen=True)
class TaskConfig:
    """Everything the runner and the scorer need to know about one task."""

    name: str
    prompt: str
    """Official template with ``{context}`` / ``{input}`` fields."""
    max_new_tokens: int
    """Official output length (``dataset2maxlen``)."""
    metric: str
    language: str
    """"en", "zh" or "code"."""
    chat: bool
    """Whether the prompt is wrapped in the chat template."""
    first_line: bool
    """Whether only the first line of a prediction is scored."""
    in_paper: bool
    """Whether the MaskKV paper reports this task."""


def check_task(name: str) -> str:
    """``name`` if it is a LongBench v1 task; otherwise a ValueError listing them."""
    if name not in DATASET2PROMPT:
        raise ValueError(
            f"unknown LongBench task {name!r}; known tasks: "
            + ", ".join(LONGBENCH_TASKS)
        )
    return name


def task_config(name: str) -> TaskConfig:
    check_task(name)
    if name in ZH_TASKS:
        language = "zh"
    elif name in CODE_TASKS:
        language = "code"
    else:
        language = "en"
    return TaskConfig(
        name=name,
        prompt=DATASET2PROMPT[name],
        max_new_tokens=DATASET2MAXLEN[name],
        metric=DATASET2METRIC[name],
        language=language,
        chat=name not in NO_CHAT_TASKS,
        first_line=name in FIRST_LINE_TASKS,
        in_paper=name in PAPER_TASKS,
    )
