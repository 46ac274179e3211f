"""CAM Explorer entry point: page set-up and navigation.

Run: streamlit run app.py

Each page begins with pages.common.sidebar(), the one sidebar they share (image, backbone,
device): Streamlit reruns only the page script after the first run, so the sidebar has to
live in the pages for its widgets to be live on every rerun.
"""

import streamlit as st

st.set_page_config(page_title="CAM Explorer", page_icon="🔥", layout="wide")

page = st.navigation([
    st.Page("pages/compare.py", title="Compare", icon="🔥", default=True),
])
page.run()
