"""The one base class of the errors a user can cause (and fix): bad input, a missing camera, a damaged
model file, a device that is not there.

The command line turns every ``InspectorError`` into a one-line message and exit code 2; the window
shows it in a banner.  Anything else that escapes is a bug.
"""

from __future__ import annotations


class InspectorError(Exception):
    """A problem with what the user gave us; the message is a sentence that says what to do."""
