"""Batch jobs (OpenAI's Batch API): input files read line by line, lines run by a worker in every gateway
replica at low priority, results gathered into output and error files exactly once.

`lines.py` reads and checks an input file; `jobs.py` owns a batch's life (status, counts, finishing);
`results.py` shapes a line's answer as OpenAI's output and error lines; `worker.py` claims lines from the
store and runs them through the live routes, only in slots interactive traffic leaves free.
"""
