"""A download button's deferred file must still be there when the user clicks the button on
the screen, even while the page reruns and other sessions finish theirs (Streamlit's own
MediaFileManager, driven as the script runner drives it)."""

import pytest
from streamlit.runtime import media_file_manager as mfm_module
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.runtime.media_file_storage import MediaFileStorageError
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from ui.common import KEPT_DOWNLOADS_PER_BUTTON, KEPT_DOWNLOADS_PER_SESSION, keep_download_callables


class Sessions:
    """Runs of browser sessions against one MediaFileManager, as ScriptRunner does them:
    a run starts by forgetting the session's references, registers its buttons, and its end
    sweeps the orphans of every session."""

    def __init__(self, monkeypatch, keep: bool):
        self.mgr = MediaFileManager(MemoryMediaFileStorage("/media"))
        if keep:
            assert keep_download_callables(self.mgr)
        self.current = None
        monkeypatch.setattr(mfm_module, "_get_session_id", lambda: self.current)

    def start(self, session):
        self.current = session
        self.mgr.clear_session_refs(session)

    def button(self, session, coordinates, payload: bytes) -> str:
        self.current = session
        return self.mgr.add_deferred(lambda: payload, "application/octet-stream", coordinates, "map.npy")

    def end(self):
        self.mgr.remove_orphaned_files()

    def click(self, file_id) -> bool:
        try:
            self.mgr.execute_deferred(file_id)
            return True
        except MediaFileStorageError:
            return False


def _stale_click_during_a_rerun(sessions) -> bool:
    s = sessions
    s.start("A")
    on_screen = s.button("A", "1.(0).2", b"old")  # A's tile, drawn by A's first run
    s.end()
    s.start("A")  # A reruns (a control moved, a slow tile recomputes)...
    s.start("B")
    s.button("B", "1.(0).2", b"b")
    s.end()  # ... and B's run ends meanwhile
    return s.click(on_screen)  # the user clicks the button still on the screen


def test_streamlit_alone_loses_the_file_of_a_button_on_the_screen(monkeypatch):
    """The failure as it happened ("Deferred file ... not found"): if this starts passing,
    Streamlit has fixed it and keep_download_callables can go."""
    assert not _stale_click_during_a_rerun(Sessions(monkeypatch, keep=False))


def test_the_file_of_a_button_on_the_screen_survives_other_sessions_runs(monkeypatch):
    assert _stale_click_during_a_rerun(Sessions(monkeypatch, keep=True))


def test_kept_callables_are_bounded(monkeypatch):
    s = Sessions(monkeypatch, keep=True)
    ids = []
    for run in range(5):  # one button redrawn by five runs: only the newest two stay
        s.start("A")
        ids.append(s.button("A", "1.(0).2", b"%d" % run))
        s.end()
    assert [s.click(i) for i in ids] == [False] * (5 - KEPT_DOWNLOADS_PER_BUTTON) + [True] * KEPT_DOWNLOADS_PER_BUTTON
    s.start("A")  # many buttons, none redrawn: at most KEPT_DOWNLOADS_PER_SESSION kept
    many = [s.button("A", f"1.(0).{n}", b"x") for n in range(KEPT_DOWNLOADS_PER_SESSION + 10)]
    s.start("A")
    s.end()
    assert sum(i in s.mgr._deferred_callables for i in many) == KEPT_DOWNLOADS_PER_SESSION
    assert all(i in s.mgr._deferred_callables for i in many[-KEPT_DOWNLOADS_PER_SESSION:])


@pytest.mark.parametrize("missing", ["_deferred_callables", "_drop_deferred_id"])
def test_other_streamlit_internals_leave_streamlit_alone(monkeypatch, missing):
    mgr = MediaFileManager(MemoryMediaFileStorage("/media"))
    monkeypatch.delattr(MediaFileManager, missing, raising=False)
    if missing in vars(mgr):
        monkeypatch.delitem(vars(mgr), missing)
    assert not keep_download_callables(mgr)
