"""F12: release the mouse to the terminal (its own selection and copy work), and take it back."""

from __future__ import annotations

from .app_base import AppBase
from .compat import app_driver, set_mouse_reporting


class MouseRelease(AppBase):
    mouse_released = False  # F12: the terminal's own selection works (glmtui gets no mouse events)

    def action_toggle_mouse(self) -> None:
        self.mouse_released = not self.mouse_released
        if self._apply_mouse():
            self.notify("Mouse released: select text with the terminal; F12 gives the mouse back to glmtui."
                        if self.mouse_released else "Mouse captured again.", timeout=4)
        else:
            self.mouse_released = False
            self.notify("In a browser glmtui cannot release the mouse: Shift+drag selects text.",
                        severity="warning", timeout=6)
        self.refresh_status()

    def _apply_mouse(self) -> bool:
        """Tell the terminal to stop (or start again) reporting the mouse; False where the driver cannot.

        Textual 8 has no public switch at runtime: its Linux drivers' own methods (the ones it runs
        at start and stop) write the mouse-reporting escapes. A headless app has no terminal to tell;
        the web driver has no such switch (the browser's terminal keeps the mouse)."""
        driver = app_driver(self)
        if driver is None or driver.is_web:
            return False
        set_mouse_reporting(driver, not self.mouse_released)
        return True
