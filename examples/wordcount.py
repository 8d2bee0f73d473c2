"""Word count, the batch (MapReduce) job: count words in text files, in parallel.

    tideflow run examples/wordcount.py -- --input PATH [PATH ...] --output counts.csv

A word is a maximal run of letters (what ``str.isalpha()`` accepts: Unicode categories Lu,
Ll, Lt, Lm, Lo) after the text (UTF-8, undecodable bytes replaced) is lower-cased. A directory
input reads every file in it. The output is a CSV file with the header ``word,count``.

Everything is vectorized: each micro-batch of lines is lower-cased and split into words by
Polars, counted per batch (the combiner), shuffled by word between workers and merged.
"""

import argparse

import polars as pl

import tideflow as tf
from tideflow.connectors import files

parser = argparse.ArgumentParser(prog="wordcount", description=__doc__.splitlines()[0])
parser.add_argument("--input", nargs="+", required=True, help="text files or directories")
parser.add_argument("--output", required=True, help="the CSV file to write")
args = parser.parse_args()

flow = tf.Dataflow("wordcount")
lines = flow.source(files.scan_text(args.input), name="read")
words = (
    lines.select(
        pl.col("line").str.to_lowercase().str.extract_all(r"\p{L}+").alias("word"), name="split"
    )
    .explode("word", name="words")
    .filter(pl.col("word").is_not_null(), name="nonempty")
)
counts = words.key_by("word").agg(pl.len().alias("count"), emit="final", name="count")
counts.sink(files.sink_csv(args.output), name="write")
