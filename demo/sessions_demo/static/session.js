// Polls /status.json every second and shows what the session's row holds.
// The poll peeks (factory.peek): validated, never extended; it is not activity.
(function () {
  "use strict";
  const script = document.getElementById("session-script");
  const url = script.dataset.statusUrl;
  const $ = (id) => document.getElementById(id);
  const secs = (n) => (n === null || n === undefined ? "off" : n + " s");
  const clock = (t) => (t ? new Date(t * 1000).toISOString().slice(11, 19) + " UTC" : "—");

  let polls = 0;

  function show(s) {
    const banner = $("state-banner");
    banner.dataset.state = s.state;
    banner.dataset.polls = ++polls; // lets a test wait for the next answers
    if (s.state === "live") {
      banner.textContent = "Live: this session expires in " + secs(s.remaining) + ".";
    } else if (s.state === "expired") {
      banner.textContent = "Expired (" + s.why + "): the server will delete this session at " +
        "its next request. Reload to see it go.";
    } else {
      banner.textContent = "No session: " + s.why + ". Reload to log in again.";
    }
    if (s.state !== "live") {
      // a session the plugins reject shows no data, only that it ended
      $("idle-remaining").textContent = $("absolute-remaining").textContent = "ended";
      return;
    }
    const idle = s.idle, abs = s.absolute, ren = s.renewal;
    $("idle-remaining").textContent = idle.timeout === null ? "off" : secs(idle.remaining) + " left";
    $("idle-remaining").className = "big";
    $("idle-detail").textContent = idle.timeout === null ? "" :
      "timeout " + idle.timeout + " s" + (idle.own ? " (this session's own)" : "") +
      ", expires " + clock(idle.expires);
    $("absolute-remaining").textContent = abs.timeout === null ? "off" : secs(abs.remaining) + " left";
    $("absolute-remaining").className = "big";
    $("absolute-detail").textContent = abs.timeout === null ? "" :
      "timeout " + abs.timeout + " s, expires " + clock(abs.expires);
    $("renewal").textContent = ren.timeout === null ? "off" : !ren.adopted
      ? "no id yet: the next request issues the first"
      : "id issued " + clock(ren.renewed_at) + "; " + (ren.offer_pending
        ? "a new id was offered at " + clock(ren.offered_at) + ", waiting for the browser to send it back"
        : (ren.next_in > 0 ? "next renewal in " + ren.next_in + " s"
          : "renewal due: the next request offers a new id")) +
        " (every " + ren.timeout + " s, offers repeated every " + ren.try_every + " s)";
    $("session-info").textContent = "id " + s.session_id + "…, created " + clock(s.created) +
      " (" + s.age + " s ago), last active " + clock(s.last_active) + ", row version " +
      s.version + (s.user ? ", user " + s.user : "");
    const rows = Object.entries(s.cookie).map(([k, v]) =>
      "<tr><th>" + k + "</th><td data-attr='" + k + "'>" +
      (v === null ? "none" : String(v)).replace(/[<>&]/g, "") + "</td></tr>");
    $("cookie").tBodies[0].innerHTML = rows.join("");
    $("data").textContent = JSON.stringify(s.data, null, 2) +
      (s.flash_waiting ? "\n(+ " + s.flash_waiting + " flash message(s) waiting)" : "") +
      "\nCSRF token stored: " + (s.csrf_token_set ? "yes" : "no");
  }

  async function poll() {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) show(await response.json());
    } catch (e) {
      $("state-banner").textContent = "The demo server does not answer (" + e + ").";
    }
  }
  poll();
  setInterval(poll, 1000);
})();
