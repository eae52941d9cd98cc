"""carecli: a terminal case-management app for health-plan outreach specialists."""

__version__ = "0.1.0"
