// Copy buttons for code blocks. Without this script the buttons stay hidden and the code is still
// selectable; with it, a button copies its block's text (the code cells only, not the line numbers).
(function () {
  function textOf(target) {
    var cells = target.querySelectorAll(".code__text");
    if (!cells.length) return target.textContent;
    return Array.prototype.map.call(cells, function (cell) { return cell.textContent; }).join("\n") + "\n";
  }
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    // Plain http (a local server): the old way, through a selected textarea.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = document.execCommand("copy");
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      var label = button.textContent;
      copy(textOf(target)).then(
        function () { button.textContent = "Copied"; },
        function () { button.textContent = "Select and copy by hand"; }
      );
      setTimeout(function () { button.textContent = label; }, 1800);
    });
  });
})();
