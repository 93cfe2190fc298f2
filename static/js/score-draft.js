// The scoring page keeps a draft on the server as the expert types (htmx posts the form after a pause).
// Answers typed since the last saved draft would still be lost by leaving: the browser asks first.
(function () {
  const form = document.querySelector("form[data-draft]");
  if (!form) return;
  let unsaved = false;
  const changed = () => { unsaved = true; };
  form.addEventListener("input", changed);
  form.addEventListener("change", changed);
  form.addEventListener("submit", () => { unsaved = false; });
  document.body.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.elt === form && event.detail.successful) unsaved = false;
  });
  window.addEventListener("beforeunload", (event) => {
    if (!unsaved) return;
    event.preventDefault();
    event.returnValue = "";
  });
})();
