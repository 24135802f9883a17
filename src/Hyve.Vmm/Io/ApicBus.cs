// SPDX-License-Identifier: BSD-2-Clause
namespace Hyve.Vmm.Io;

/// <summary>
/// Where interrupt messages go: the local APICs. The KVM glue implements it with KVM_SIGNAL_MSI; the software
/// CPU's Vlapic set implements it by decoding the message with <see cref="MsiMessage"/>.
/// Both the IOAPIC and PCI MSI/MSI-X use this one path, as on real hardware (the IOAPIC sends messages).
/// </summary>
public interface IApicBus
{
    /// <summary>Delivers one interrupt message in Intel's MSI format (see <see cref="MsiMessage"/>); only the low
    /// 32 bits of <paramref name="data"/> are meaningful. (The signature matches the software CPU's LapicBus.)</summary>
    void DeliverMsi(ulong address, ulong data);
}

/// <summary>Delivery modes of an interrupt message (SDM Vol 3, 11.11.2, and IOAPIC redirection entry bits 10:8).</summary>
public enum DeliveryMode
{
    /// <summary>Deliver to every destination.</summary>
    Fixed = 0,
    /// <summary>Deliver to the destination running at the lowest priority.</summary>
    LowestPriority = 1,
    /// <summary>System management interrupt.</summary>
    Smi = 2,
    /// <summary>Non-maskable interrupt (vector ignored).</summary>
    Nmi = 4,
    /// <summary>INIT.</summary>
    Init = 5,
    /// <summary>External interrupt: the vector comes from the 8259 by an INTA cycle.</summary>
    ExtInt = 7,
}

/// <summary>
/// Intel's MSI encoding (SDM Vol 3, 11.11.1 and 11.11.2), used by the IOAPIC to describe a redirection entry.
/// Address: 0xFEE00000 | destination ID &lt;&lt; 12 | extended destination ID (bits 11:5) | RH &lt;&lt; 3 | DM &lt;&lt; 2
/// (DM 1 = logical). Data: vector | delivery mode &lt;&lt; 8 | level (1 = assert) &lt;&lt; 14 | trigger (1 = level) &lt;&lt; 15.
/// </summary>
public readonly record struct MsiMessage(int Destination, bool LogicalDestination, bool RedirectionHint,
    DeliveryMode DeliveryMode, int Vector, bool Assert, bool LevelTriggered)
{
    /// <summary>The fixed upper part of every MSI address (the local APIC window).</summary>
    public const ulong AddressBase = 0xFEE0_0000;

    /// <summary>The message's address.</summary>
    public ulong Address => AddressBase | (ulong)(Destination & 0xff) << 12 | (ulong)(Destination >> 8 & 0x7f) << 5
        | (RedirectionHint ? 1ul << 3 : 0) | (LogicalDestination ? 1ul << 2 : 0);

    /// <summary>The message's data.</summary>
    public uint Data => (uint)(Vector & 0xff) | (uint)((int)DeliveryMode & 7) << 8 | (Assert ? 1u << 14 : 0) | (LevelTriggered ? 1u << 15 : 0);

    /// <summary>Decodes an address/data pair. Destination includes the extended destination ID bits 11:5 of the
    /// address as bits 14:8 (KVM's extended-destination-ID convention), so plain 8-bit IDs decode unchanged.</summary>
    public static MsiMessage Decode(ulong address, ulong data)
    {
        int dest = (int)(address >> 12 & 0xff) | (int)(address >> 5 & 0x7f) << 8;
        return new MsiMessage(dest, (address & 4) != 0, (address & 8) != 0, (DeliveryMode)(data >> 8 & 7),
            (int)(data & 0xff), (data & 1ul << 14) != 0, (data & 1ul << 15) != 0);
    }
}
