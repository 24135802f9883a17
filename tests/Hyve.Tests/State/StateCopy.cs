// SPDX-License-Identifier: BSD-2-Clause
using Hyve.Vmm.State;

namespace Hyve.Tests.State;

/// <summary>Saves and loads single devices through the inventory's section checks, as a snapshot does.</summary>
internal static class StateCopy
{
    public static StateSection Save(IDeviceState s) => DeviceInventory.SaveOne(s, "0");

    public static void Load(IDeviceState s, StateSection section) => DeviceInventory.LoadOne(s, section);

    public static void Copy(IDeviceState from, IDeviceState to) => Load(to, Save(from));
}
