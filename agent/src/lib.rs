//! Host<->guest protocol types shared by the agent and hull.
