"""What ``specgrow apply`` does, in order: prove, open, grow, write, check, record.

The pipeline sits above `specgrow.lower`, which executes, reads and writes, and
`specgrow.verify`, which proves; neither imports it. `proof` is the proving step (the
training API, `specgrow.grow`, proves through it too), `check` turns a failed numeric check
into its verdict, `record` writes the spec, the certificate, the lineage (`lineage`) and the
manifest, `apply` grows into safetensors and `dcp` into a torch.distributed checkpoint across
ranks; `audit` checks an output folder against its record, without torch.
"""
