"""CAM Explorer entry point: page set-up, navigation and the shared sidebar.

Run: streamlit run app.py

With st.navigation, Streamlit runs this file on every rerun: it draws the sidebar the pages
share (image, backbone, device; ui/common.py) and runs the chosen page, which starts from
that selection (ui.common.page_selection()).
"""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. When the browser
# runs on the same small machine, spinning threads fight it for the cores: measured on the
# 2-core CPU, a forward pass went from 35 ms to 225-380 ms and Grad-CAM++ from 0.4 to 120 ms
# while the page rendered; with PASSIVE they stay at 60-90 ms and ~1 ms (and the CLI and
# benchmarks, which keep the default, lose nothing).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from ui.common import run_page, sidebar, working_indicator  # noqa: E402

st.set_page_config(page_title="CAM Explorer", page_icon="🔥", layout="wide")

# One line per page: its file under pages/, its title and icon.
PAGES = [
    st.Page("pages/compare.py", title="Compare", icon=":material/grid_view:", default=True),
    st.Page("pages/feature_space.py", title="Feature space", icon=":material/scatter_plot:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
]

page = st.navigation(PAGES)
working = working_indicator()
try:
    run_page(page, sidebar(), working)
finally:
    working.done()
