# The 002 seed notebook, cell by cell, with only the imports changed from `datapipe.*` to
# `datapipe_dagster`. Two switches let the tests run it on PostgreSQL and in run_steps mode:
# SEED_DB (default: the notebook's own sqlite:///store.sqlite) and SEED_MODE (default: changelist).
# ruff: noqa
import os

SEED_DB = os.environ.get("SEED_DB", "sqlite:///store.sqlite")
SEED_MODE = os.environ.get("SEED_MODE", "changelist")

# In [2]:
from sqlalchemy import Column, String, JSON, Integer
import json

# In [3]:
events_schema = [
    Column("user_id", String(), primary_key=True),
    Column("event_id", String(), primary_key=True),
    Column("event", JSON())
]
click_count_schema = [
    Column('user_id', String(), primary_key=True),
    Column('click_count', Integer())
]
ip_schema = [
    Column('user_id', String(), primary_key=True),
    Column('ip', String())
]

# In [5]:
from datapipe_dagster import DBConn
dbconn = DBConn(SEED_DB)
from sqlalchemy.engine import create_engine
from sqlalchemy.orm import Session
engine = create_engine(dbconn.url)

# In [6]:
from datapipe_dagster import Catalog, Table
from datapipe_dagster import TableStoreDB

# In [7]:
events_store = TableStoreDB(
    name='events',
    dbconn=dbconn,
    data_sql_schema=events_schema
)

click_store = TableStoreDB(
    name='click_count',
    dbconn=dbconn,
    data_sql_schema=click_count_schema
)

ip_store = TableStoreDB(
    name='ip',
    dbconn=dbconn,
    data_sql_schema=ip_schema
)

# In [8]:
catalog = Catalog({
    'events': Table(store=events_store),
    'click_count': Table(store=click_store),
    'ip': Table(store=ip_store)
})

# In [9]:
from datapipe_dagster import DataStore
import pandas as pd

# In [10]:
ds = DataStore(dbconn)

# In [11]:
def parse_clicks_ip_step(df: pd.DataFrame) -> pd.DataFrame:
    res = []

    res_ips = []

    for user_id, grp in df.groupby("user_id"):
        events = grp['event'].apply(json.loads)
        click_count = sum([1 for x in events if x['event_type'] == 'click'])
        res.append({'user_id': user_id, 'click_count': click_count})
        res_ips.append({'user_id': user_id, 'ip': events.iloc[-1]['ip']})

    return (
        pd.DataFrame.from_records(res),
        pd.DataFrame.from_records(res_ips),
    )

# In [12]:
from datapipe_dagster import Pipeline, build_compute
from datapipe_dagster import BatchTransform

# In [13]:
pipeline = Pipeline(steps=[
    BatchTransform(
        parse_clicks_ip_step,
        inputs=["events"],
        outputs=["click_count", "ip"],
    )
])

# In [14]:
steps = build_compute(ds, catalog, pipeline)

# In [15]:
from fastapi import FastAPI
from fastapi.testclient import TestClient

# In [16]:
app = FastAPI()

# In [17]:
from datapipe_dagster import ChangeList
from datapipe_dagster import run_steps_changelist, run_steps
import json
from pydantic import BaseModel, ConfigDict

class UpdateDataRequest(BaseModel):
    # The one change besides imports: the seed ran on pydantic 1, which turned the posted 1 into "1";
    # pydantic 2 (which FastAPI now requires) does that only when asked.
    model_config = ConfigDict(coerce_numbers_to_str=True)
    user_id: str
    event_id: str
    event: dict


# In [18]:
@app.post("/update-data")
def update_data(req: UpdateDataRequest):
    dt = catalog.get_datatable(ds, 'events')

    cl = ChangeList()

    chunk = pd.DataFrame({
        'user_id': req.user_id,
        'event_id': req.event_id,
        'event': json.dumps(req.event)
    }, index=[0])
    idx = dt.store_chunk(chunk)

    cl.append('events', idx)

    if SEED_MODE == "changelist":
        run_steps_changelist(ds, steps, cl)
    else:
        run_steps(ds, steps)

    return {
        "result": "ok"
    }


# In [19]:
user_event_1 = {
            "user_id": 1,
            "event_id": 1,
            "event": {
                "event_type": "click",
                "ip": "111.111.111.111",
            }
        }


# In [20]:
client = TestClient(app)
item = client.post("/update-data", json=user_event_1).json()
print(item)

# In [21]:
events_dt = catalog.get_datatable(ds, 'events')
print(events_dt.get_data())
click_count_dt = catalog.get_datatable(ds, 'click_count')
print(click_count_dt.get_data())
ip_dt = catalog.get_datatable(ds, 'ip')
print(ip_dt.get_data())

# In [22]:
user_event_2 = {
            "user_id": 1,
            "event_id": 2,
            "event": {
                "event_type": "click",
                "ip": "222.222.222.222",
            }
        }
item = client.post("/update-data", json=user_event_2).json()

# In [23]:
events_dt = catalog.get_datatable(ds, 'events')
print(events_dt.get_data())
click_count_dt = catalog.get_datatable(ds, 'click_count')
print(click_count_dt.get_data())
ip_dt = catalog.get_datatable(ds, 'ip')
print(ip_dt.get_data())

# In [26]:
user_event_3 = {
            "user_id": 1,
            "event_id": 1,
            "event": {
                "event_type": "clack",
                "ip": "333.333.333.333",
            }
        }
item = client.post("/update-data", json=user_event_3).json()

# In [27]:
events_dt = catalog.get_datatable(ds, 'events')
print(events_dt.get_data())
click_count_dt = catalog.get_datatable(ds, 'click_count')
print(click_count_dt.get_data())
ip_dt = catalog.get_datatable(ds, 'ip')
print(ip_dt.get_data())
