"""The run directory: layout, the record of what was written, checkpoint markers, decide(), the lifecycle, the plan."""
