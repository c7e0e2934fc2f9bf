"""Figure builders: data in, figure out; nothing here reads or writes a run folder.

    figures.training    training curves, the recall table, the per-epoch history table
    figures.gallery     the retrieval gallery (a PIL image) and its plotly figure
    figures.attention   the attention figures (plotly and matplotlib from the same data)
    figures.serialise   to_html, to_png, figure_files: figures to file contents
"""

from ibdml.figures.serialise import PLOTLY_JS, figure_files, plotly_js, to_html, to_png

__all__ = ["PLOTLY_JS", "figure_files", "plotly_js", "to_html", "to_png"]
