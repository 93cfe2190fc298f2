// "Select all on this page" for a list of checkboxes of one name. Without this script the toggle stays
// hidden and each box is ticked by hand (or "all that match" is chosen, which needs no script); with it,
// the toggle ticks or unticks every box, and follows them: checked when all are, mixed when some are.
(function () {
  document.querySelectorAll("input[data-select-all]").forEach(function (toggle) {
    var name = toggle.getAttribute("data-select-all");
    var form = toggle.form;
    var count = form.querySelector("[data-picked-count]");
    function boxes() { return form.querySelectorAll("input[type=checkbox][name='" + name + "']"); }
    function follow() {
      var all = boxes();
      var ticked = Array.prototype.filter.call(all, function (box) { return box.checked; }).length;
      toggle.checked = all.length > 0 && ticked === all.length;
      toggle.indeterminate = ticked > 0 && ticked < all.length;
      if (count) {
        // Ticks kept from other pages travel as hidden inputs of the same name.
        var kept = form.querySelectorAll("input[type=hidden][name='" + name + "']").length;
        count.textContent = String(ticked + kept);
      }
    }
    var wrapper = toggle.closest("[hidden]");
    if (wrapper) wrapper.hidden = false;
    toggle.addEventListener("change", function () {
      boxes().forEach(function (box) { box.checked = toggle.checked; });
      follow();
    });
    form.addEventListener("change", function (event) {
      if (event.target !== toggle && event.target.name === name) follow();
    });
    follow();
  });
})();
