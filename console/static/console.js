// hookline console: the only script the pages load (the Content-Security-Policy allows no
// other, and no inline script). Everything works without it; it only adds comfort:
// - pages with <body data-refresh="N"> (the overview, a bulk action's progress) refresh their
//   <main> every N seconds while the tab is visible, until a refreshed page no longer asks;
// - the dead-letter list gets a "select this page" checkbox.
"use strict";

(function () {
  function refreshEvery(seconds) {
    var timer = window.setTimeout(async function () {
      if (document.hidden) {
        refreshEvery(seconds);
        return;
      }
      try {
        var response = await fetch(window.location.href, { credentials: "same-origin" });
        if (!response.ok || response.redirected) {
          window.location.reload(); // logged out, or an error: show it as a page
          return;
        }
        var next = new DOMParser().parseFromString(await response.text(), "text/html");
        var main = next.getElementById("main");
        if (main) {
          document.getElementById("main").replaceWith(document.adoptNode(main));
        }
        var again = next.body.getAttribute("data-refresh");
        if (again) {
          refreshEvery(Number(again));
        } else {
          document.body.removeAttribute("data-refresh");
        }
      } catch (err) {
        refreshEvery(seconds * 2); // the console is restarting: try again later
      }
    }, seconds * 1000);
    return timer;
  }

  function selectPage() {
    var all = document.getElementById("select-page");
    if (!all) {
      return;
    }
    all.hidden = false;
    all.addEventListener("change", function () {
      document.querySelectorAll("input.pick").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var seconds = Number(document.body.getAttribute("data-refresh"));
    if (seconds > 0) {
      refreshEvery(seconds);
    }
    selectPage();
  });
})();
