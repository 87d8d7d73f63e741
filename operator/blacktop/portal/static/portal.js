/* Blacktop portal: the request builder checks the form as you type.
 *
 * Nothing is decided here: the form is sent to the portal's preview endpoint, which runs the same
 * decision admission makes (schema, guardrails, team boundary) and answers with the manifest, the
 * messages by field, and the estimated cost. This script only shows the answer. Without JavaScript
 * the form still works: "Check" submits it and the page is rendered with the same answer.
 */
(function () {
  "use strict";

  function copyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.getElementById(button.dataset.copy);
        if (!source || !navigator.clipboard) { return; }
        navigator.clipboard.writeText(source.textContent).then(function () {
          var label = button.textContent;
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = label; }, 1200);
        });
      });
    });
  }

  function text(id, value) {
    var node = document.getElementById(id);
    if (node) { node.textContent = value; }
    return node;
  }

  function show(id, visible) {
    var node = document.getElementById(id);
    if (node) { node.hidden = !visible; }
  }

  function stateOf(result) {
    if (result.missing.length || !result.yaml) { return "incomplete"; }
    if (result.unchanged) { return "unchanged"; }
    return result.admitted ? "admitted" : "denied";
  }

  function render(form, result, query) {
    form.querySelectorAll("[data-error-for]").forEach(function (node) {
      var messages = result.errors[node.dataset.errorFor] || [];
      node.textContent = messages.join("\n");
      var input = document.getElementById(node.getAttribute("id").replace(/^e-/, "f-"));
      if (input) { input.setAttribute("aria-invalid", messages.length ? "true" : "false"); }
    });
    var state = stateOf(result);
    var verdict = document.getElementById("verdict");
    verdict.className = "verdict " + state;
    verdict.dataset.state = state;
    var words = {
      incomplete: "Still needed: " + result.missing.join(", ") + ".",
      unchanged: "This request exists with exactly these values: applying it changes nothing.",
      admitted: "Admission would accept this request" + (result.exists ? " (it updates the existing one)." : "."),
      denied: "Admission would refuse this request:"
    };
    text("verdict-text", words[state]);
    var general = (result.errors[""] || []).join("\n");
    text("denial", result.denial || general);
    show("denial", Boolean(result.denial || general));
    var warnings = document.getElementById("warnings");
    warnings.textContent = "";
    result.warnings.forEach(function (warning) {
      var item = document.createElement("li");
      item.textContent = "Warning: " + warning;
      warnings.appendChild(item);
    });
    var cost = result.cost;
    show("cost", Boolean(cost));
    if (cost) {
      document.getElementById("cost").className = "cost" + (cost.over ? " over" : "");
      text("cost-text", cost.monthly + " " + cost.currency + "/month. Environment: " + cost.before + " → " +
        cost.after + " " + cost.currency + "/month" +
        (cost.budget === null ? ", no budget." : ", budget " + cost.budget + " (" + cost.percent + "%)."));
    }
    show("output", Boolean(result.yaml));
    text("manifest", result.yaml);
    text("apply-line", result.applyLine);
    text("dry-run-line", result.dryRunLine);
    var download = document.getElementById("download");
    if (download) { download.href = form.dataset.download + "?" + query; }
  }

  function builder() {
    var form = document.getElementById("builder");
    if (!form) { return; }
    var timer = null;
    var latest = 0;
    function check() {
      var query = new URLSearchParams(new FormData(form)).toString();
      var mine = ++latest;
      history.replaceState(null, "", location.pathname + "?" + query);
      fetch(form.dataset.preview + "?" + query, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) { throw new Error("the portal answered " + response.status); }
          return response.json();
        })
        .then(function (result) { if (mine === latest) { render(form, result, query); } })
        .catch(function (error) {
          if (mine !== latest) { return; }
          text("verdict-text", "Could not check the request: " + error.message + ". Reload the page to sign in again.");
        });
    }
    function soon() {
      clearTimeout(timer);
      timer = setTimeout(check, 200);
    }
    form.addEventListener("input", soon);
    form.addEventListener("change", soon);
    form.addEventListener("submit", function (event) { event.preventDefault(); check(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    copyButtons();
    builder();
  });
})();
