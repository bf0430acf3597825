"""One library function per stage of a revision, each over typed values, each writing its own
output: the CLI commands and the recipe (`revise run`) are two shells over these.

=========  ===================================  ==========================
stage      function                             writes
=========  ===================================  ==========================
index      :func:`revise.stages.index.index_site`       a manifest
unlearn    :func:`revise.stages.unlearn.unlearn_run`    a run folder
merge      :func:`revise.stages.merge.merge_to_run`     a run folder
export     :func:`revise.stages.export.export_bundle`   a bundle folder
validate   :func:`revise.stages.validate.validate_model` a report folder
sign       :func:`revise.export.signing.sign_bundle`    the bundle's signature
=========  ===================================  ==========================

A stage's options that a recipe section may set are a pydantic model (``MergeOptions``,
``ExportOptions``, ``ValidateOptions``): their field names are the CLI's flags (``--heldout-
select`` is ``heldout_select``), so a recipe key, a flag and a keyword argument are one name.
Messages name options by field; each shell says them its own way (a flag, a recipe key).

:func:`revise.stages.demo.run_demo` (`revise demo`) runs the whole path on a built-in site.
"""
