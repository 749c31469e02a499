"""Parallel requests from two devices: the merge rule keeps one device's pair whole."""

from __future__ import annotations

from sessions_device import DeviceMixin

from sessions_kernel.testing import Race, make_model

PHONE = {"User-Agent": "Phone/1.0"}
LAPTOP = {"User-Agent": "Laptop/2.0"}
HOME = {"REMOTE_ADDR": "198.51.100.7"}
TRAIN = {"REMOTE_ADDR": "203.0.113.50"}


def test_parallel_requests_keep_one_device_whole(session_app):
    app = session_app(make_model(DeviceMixin))
    app.post_json("/set", {"a": 1}, headers=PHONE, extra_environ=HOME)
    with Race(app) as race:
        # each request read the session; each has a device of its own to record
        laptop = race.start("/read", headers=LAPTOP, extra_environ=HOME)
        phone = race.start("/read", headers=PHONE, extra_environ=TRAIN)
        phone.finish()  # stores the phone on the train
        laptop.finish()  # commits after it: the rule (keep_theirs) keeps the phone's pair
    assert laptop.attempts == phone.attempts == 1  # merged, not run again
    row = app.row()
    assert (row.device_last_ip, row.device_last_user_agent) == ("203.0.113.50", "Phone/1.0")
