"""The developer portal (`/portal/`): server-rendered pages over the other apps' services.

A deliberate deviation from the five-app layout in the house style: the portal is a *view* of
accounts, apikeys, metering, payments and relay, not a domain of its own. It owns no models and no
business rules; every page reads through another app's selectors and every form posts to another
app's services (keys through `apikeys.services`, checkout through `payments.services`, balance
and history through `upstreams.flash`). Keeping the HTML, CSS and the small JavaScript here keeps
the API apps free of templates, and lets the admin dashboard (`timepoint_billing/admin_site.py`)
share the chart helper in `timepoint_billing/charts.py`.
"""
