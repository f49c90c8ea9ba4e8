"""One ComponentResource per concern. Each takes an Args dataclass of plain values and
Outputs, creates its children with parent=self, and registers named outputs."""
