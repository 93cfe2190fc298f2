// Draws the Mermaid diagrams of a paper run's plan. Their text is a model's output, put in the page
// escaped: mermaid reads it as text, and the strict security level allows no HTML labels, no clicks.
(function () {
  if (!window.mermaid) return;
  window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });

  function draw(root) {
    if (!root || !root.querySelectorAll) return;
    const nodes = Array.from(root.querySelectorAll("pre.mermaid:not([data-processed])"));
    if (nodes.length) window.mermaid.run({ nodes: nodes, suppressErrors: true });
  }

  draw(document);
  // The run page swaps its live part every few seconds; diagrams that arrive with it are drawn then.
  document.body.addEventListener("htmx:afterSettle", function () { draw(document); });
})();
