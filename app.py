"""CAM Explorer entry point: page set-up and navigation.

Run: streamlit run app.py

Each page begins with pages.common.sidebar(), the one sidebar they share (image, backbone,
device): Streamlit reruns only the page script after the first run, so the sidebar has to
live in the pages for its widgets to be live on every rerun.
"""

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. When the browser
# runs on the same small machine, spinning threads fight it for the cores: measured on the
# 2-core CPU, a forward pass went from 35 ms to 225-380 ms and Grad-CAM++ from 0.4 to 120 ms
# while the page rendered; with PASSIVE they stay at 60-90 ms and ~1 ms (and the CLI and
# benchmarks, which keep the default, lose nothing).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

st.set_page_config(page_title="CAM Explorer", page_icon="🔥", layout="wide")

page = st.navigation([
    st.Page("pages/compare.py", title="Compare", icon=":material/grid_view:", default=True),
    st.Page("pages/feature_space.py", title="Feature space", icon=":material/scatter_plot:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
])
page.run()
